//! `kubectl-swarmseed` against the test API server: what a user types and
//! sees, exit codes included, directly and as a kubectl plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_standin::{ApiServer, Kubectl};
use swarmseed_crd::Dataset;
use swarmseed_operator::status::{self, NodeReport, Reason, RevisionInfo, StatusInput};
use swarmseed_proto::pb::{DatasetProgress, DatasetState, ErrorInfo};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-swarmseed");
const GIB: u64 = 1 << 30;
const REVISION: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn finished(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn plugin(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(PLUGIN);
    c.args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=10s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs the plugin to the end (bounded).
async fn run(kubeconfig: &Path, args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), plugin(kubeconfig, args).output())
        .await
        .unwrap_or_else(|_| panic!("kubectl-swarmseed {args:?} hung"))
        .expect("kubectl-swarmseed runs");
    finished(out)
}

/// A running plugin whose output is read while it runs.
struct Following {
    child: Child,
    stdout: tokio::process::ChildStdout,
    seen: Vec<u8>,
}

impl Following {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("kubectl-swarmseed starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        Self {
            child,
            stdout,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until it holds `marker`.
    async fn read_until(&mut self, marker: &str) {
        let read = async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&self.seen).contains(marker) {
                let n = self.stdout.read(&mut buf).await.expect("stdout reads");
                assert!(n > 0, "stdout closed before {marker:?}");
                self.seen.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .unwrap_or_else(|_| {
                panic!("no {marker:?} in {:?}", String::from_utf8_lossy(&self.seen))
            });
    }

    /// Waits for the exit (bounded) and returns everything it printed.
    async fn finish(mut self, what: &str) -> Run {
        let rest = async {
            self.stdout
                .read_to_end(&mut self.seen)
                .await
                .expect("stdout reads");
            self.child
                .wait_with_output()
                .await
                .expect("kubectl-swarmseed runs")
        };
        let out = tokio::time::timeout(Duration::from_secs(60), rest)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish"));
        Run {
            stdout: String::from_utf8_lossy(&self.seen).into_owned(),
            ..finished(out)
        }
    }
}

fn cells(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

fn dataset(namespace: &str, name: &str) -> Dataset {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "swarmseed.io/v1alpha1", "kind": "Dataset",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "source": { "uri": format!("s3://models/{name}") } },
    }))
    .expect("a Dataset")
}

fn progress(state: DatasetState, verified: u64, origin: u64) -> NodeReport {
    let mut p = DatasetProgress {
        revision: REVISION.into(),
        bytes_total: 4 * GIB,
        bytes_verified: verified,
        bytes_from_origin: origin,
        bytes_from_peers: verified - origin,
        ..Default::default()
    };
    p.set_state(state);
    if state == DatasetState::Ready {
        p.published_revision = REVISION.into();
        p.content_digest = vec![7; 32];
    }
    NodeReport::Progress(Some(Box::new(p)))
}

fn failed(reason: Reason, message: &str) -> NodeReport {
    let mut p = DatasetProgress {
        revision: REVISION.into(),
        error: Some(ErrorInfo::new(reason, message)),
        ..Default::default()
    };
    p.set_state(DatasetState::Failed);
    NodeReport::Progress(Some(Box::new(p)))
}

/// Writes the status the operator would compute from `nodes`, as it does
/// (server-side apply on /status).
async fn report(api: &Api<Dataset>, name: &str, nodes: Vec<(&str, NodeReport)>) {
    let ds = api.get(name).await.expect("the Dataset exists");
    let nodes: BTreeMap<String, NodeReport> =
        nodes.into_iter().map(|(n, r)| (n.to_owned(), r)).collect();
    let st = status::compute(&StatusInput {
        namespace: ds.metadata.namespace.as_deref().unwrap_or_default(),
        name,
        selector: "every node",
        generation: ds.metadata.generation,
        nodes: &nodes,
        revision: Some(&RevisionInfo {
            revision: REVISION.into(),
            total_bytes: 4 * GIB,
            files: 3,
            chunk_size: 4 << 20,
            ..RevisionInfo::default()
        }),
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
        api.patch_status(name, &pp, &Patch::Apply(&patch)),
    )
    .await
    .expect("status write answered")
    .expect("status written");
}

/// The stand-in's kubeconfig plus a context `ml` whose namespace is `ml`.
fn kubeconfig_with_ml_context(server: &ApiServer) -> String {
    format!(
        "{}contexts:\n- name: swarmseed-e2e\n  context: {{cluster: swarmseed-e2e, user: swarmseed-e2e}}\n\
         - name: ml\n  context: {{cluster: swarmseed-e2e, user: swarmseed-e2e, namespace: ml}}\n",
        server
            .kubeconfig_yaml()
            .split("contexts:")
            .next()
            .expect("a kubeconfig")
    ) + "current-context: swarmseed-e2e\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_lists_shows_and_waits_for_datasets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig_with_ml_context(&server)).unwrap();
    let kc = kc.as_path();

    // Without the CRD, every command says so.
    for args in [&["ls"][..], &["status", "llama"], &["wait", "llama"]] {
        let r = run(kc, args).await;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with(
                "Error: the Dataset API (datasets.swarmseed.io/v1alpha1) is not installed in this cluster"
            ),
            "{args:?}: {}",
            r.stderr
        );
    }

    let client = server.client().await.unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &Dataset::crd())
        .await
        .unwrap();
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "ml"}}))
        .expect("a Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let default: Api<Dataset> = Api::namespaced(client.clone(), "default");
    let ml: Api<Dataset> = Api::namespaced(client.clone(), "ml");

    let r = run(kc, &["ls"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
    assert_eq!(r.stderr, "No datasets found in namespace \"default\".\n");

    default
        .create(&PostParams::default(), &dataset("default", "llama"))
        .await
        .unwrap();
    ml.create(&PostParams::default(), &dataset("ml", "bert"))
        .await
        .unwrap();

    // Not reported on yet.
    let r = run(kc, &["ls"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = cells(&r.stdout);
    assert_eq!(
        t[0],
        ["NAME", "READY", "SIZE", "ORIGIN-RATIO", "AGE", "STATUS"]
    );
    assert_eq!(t.len(), 2, "{}", r.stdout);
    assert_eq!(
        [t[1][0], t[1][1], t[1][2], t[1][3], t[1][5]],
        ["llama", "-", "-", "-", "-"]
    );

    // Seeding: one node done, one at 57%, one not started.
    report(
        &default,
        "llama",
        vec![
            ("gpu-1", progress(DatasetState::Ready, 4 * GIB, 2 * GIB)),
            (
                "gpu-2",
                progress(DatasetState::Transferring, 4 * GIB * 57 / 100 + 1, GIB),
            ),
            ("gpu-3", NodeReport::Progress(None)),
        ],
    )
    .await;
    report(
        &ml,
        "bert",
        vec![
            ("cpu-1", progress(DatasetState::Ready, 4 * GIB, 4 * GIB)),
            (
                "cpu-2",
                failed(Reason::InsufficientStorage, "1GiB free, 4GiB needed"),
            ),
        ],
    )
    .await;

    let r = run(kc, &["ls", "-A"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = cells(&r.stdout);
    assert_eq!(
        t[0],
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "SIZE",
            "ORIGIN-RATIO",
            "AGE",
            "STATUS"
        ]
    );
    let rows: Vec<Vec<&str>> = t[1..].iter().map(|r| [&r[..5], &r[6..]].concat()).collect();
    assert_eq!(
        rows,
        [
            ["default", "llama", "1/3", "4GiB", "0.75x", "NotReady"],
            ["ml", "bert", "1/2", "4GiB", "1.00x", "InsufficientStorage"],
        ],
        "{}",
        r.stdout
    );

    // The context's namespace is the default; -n overrides it.
    let r = run(kc, &["ls", "--context", "ml"]).await;
    let t = cells(&r.stdout);
    assert_eq!((t.len(), t[1][0]), (2, "bert"), "{}{}", r.stdout, r.stderr);
    let r = run(kc, &["ls", "--context", "ml", "-n", "default"]).await;
    assert_eq!(cells(&r.stdout)[1][0], "llama", "{}", r.stdout);

    let r = run(kc, &["status", "llama"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.stdout;
    for line in [
        "Dataset:    default/llama\n",
        "Source:     s3://models/llama\n",
        "Revision:   0123456789abcdef\n",
        "Size:       4GiB\n",
        "Files:      3\n",
        "Chunk size: 4MiB\n",
        "Path:       /var/lib/swarmseed/datasets/default/llama\n",
        "Nodes:      1/3 ready, 2 seeding, 0 failed\n",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    let label = swarmseed_core::label::key("default", "llama");
    assert!(
        out.contains(&format!("Node label: {label}=ready\n")),
        "{out}"
    );
    let nodes: Vec<&str> = out.lines().filter(|l| l.starts_with("gpu-")).collect();
    assert_eq!(
        nodes,
        [
            "gpu-1   [####################] 100%   4GiB/4GiB     origin 2GiB / peers 2GiB     Ready",
            "gpu-2   [###########---------]  57%   2.3GiB/4GiB   origin 1GiB / peers 1.3GiB   Transferring",
            "gpu-3   [--------------------]   0%   0B/4GiB       origin 0B / peers 0B         Pending",
        ],
        "{out}"
    );
    assert!(
        out.contains("\nTotal: origin 3GiB / peers 3.3GiB (52% from peers); origin ratio 0.75x"),
        "{out}"
    );
    let ready = cells(out).into_iter().find(|l| l.first() == Some(&"Ready"));
    assert_eq!(
        ready.as_deref(),
        Some(
            &[
                "Ready", "False", "NotReady", "1/3", "nodes", "ready,", "2", "seeding,", "0",
                "failed"
            ][..]
        ),
        "{out}"
    );

    let r = run(kc, &["status", "missing"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "Error: dataset \"missing\" not found in namespace \"default\"\n"
    );
    let r = run(kc, &["status", "bert"]).await;
    assert_eq!(
        r.stderr,
        "Error: dataset \"bert\" not found in namespace \"default\"\n"
    );

    // Still seeding: wait gives up with 2, having shown the progress.
    let r = run(kc, &["wait", "llama", "--timeout", "2s"]).await;
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "llama: 1/3 nodes ready, 6.3GiB/12GiB verified (52%), origin 3GiB / peers 3.3GiB [NotReady]\n"
    );
    assert_eq!(
        r.stderr,
        "Error: timed out after 2s waiting for dataset \"llama\" to be Ready\n"
    );

    // A failed node: wait stops at once with 1 and says why.
    let r = run(kc, &["wait", "bert", "-n", "ml"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stderr,
        "Error: dataset \"bert\" is Degraded: InsufficientStorage: 1 node(s) failed; cpu-2: 1GiB free, 4GiB needed\n"
    );

    // wait and status --watch follow the Dataset until it is Ready: once
    // each has shown the seeding state, the last nodes finish.
    let mut waiting = Following::spawn(plugin(
        kc,
        &["wait", "llama", "--for", "ready", "--timeout", "1m"],
    ));
    let mut watching = Following::spawn(plugin(kc, &["status", "llama", "--watch"]));
    waiting.read_until("[NotReady]\n").await;
    watching.read_until("\nTotal:").await;
    let all_ready = || {
        vec![
            ("gpu-1", progress(DatasetState::Ready, 4 * GIB, 2 * GIB)),
            ("gpu-2", progress(DatasetState::Ready, 4 * GIB, GIB)),
            ("gpu-3", progress(DatasetState::Ready, 4 * GIB, 0)),
        ]
    };
    report(&default, "llama", all_ready()).await;
    let r = waiting.finish("wait").await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(
            "llama: 1/3 nodes ready, 6.3GiB/12GiB verified (52%), origin 3GiB / peers 3.3GiB [NotReady]"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(
        lines.last().copied(),
        Some(
            "dataset \"llama\" is Ready: 3/3 nodes hold a verified copy of revision 0123456789abcdef"
        ),
        "{}",
        r.stdout
    );
    let r = watching.finish("status --watch").await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains('\x1b'), "no escape codes into a pipe");
    let pages: Vec<&str> = r.stdout.split("\nDataset:").collect();
    assert_eq!(pages.len(), 2, "one page per change:\n{}", r.stdout);
    assert!(pages[0].contains("Transferring"), "{}", pages[0]);
    assert!(pages[1].contains("Nodes:      3/3 ready"), "{}", pages[1]);

    // A new spec: the Ready status is for the old generation, so wait
    // does not take it for an answer.
    let bump = serde_json::json!({"spec": {"source": {"uri": "s3://models/llama-v2"}}});
    default
        .patch("llama", &PatchParams::default(), &Patch::Merge(&bump))
        .await
        .unwrap();
    let r = run(kc, &["wait", "llama", "--timeout", "0"]).await;
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "llama: waiting for the operator to act on generation 2\n"
    );

    // As a kubectl plugin: kubectl finds kubectl-swarmseed on PATH.
    if Kubectl::installed() {
        let dir = PathBuf::from(PLUGIN)
            .parent()
            .expect("the binary's directory")
            .to_path_buf();
        let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        let via_kubectl = Command::new("kubectl")
            .args(["swarmseed", "ls", "-A", "--kubeconfig"])
            .arg(kc)
            .env("PATH", path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let r = finished(
            tokio::time::timeout(Duration::from_secs(60), via_kubectl)
                .await
                .expect("kubectl swarmseed finishes")
                .expect("kubectl runs"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let t = cells(&r.stdout);
        assert_eq!(t[0][0], "NAMESPACE", "{}", r.stdout);
        assert_eq!(
            [&t[1][..5], &t[1][6..]].concat(),
            ["default", "llama", "3/3", "4GiB", "0.75x", "Ready"]
        );
    } else {
        eprintln!("!!!!! SKIPPED the kubectl part: no `kubectl` on PATH !!!!!");
    }
    server.shutdown().await;
}
