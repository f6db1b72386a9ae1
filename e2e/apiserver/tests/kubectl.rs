//! The real `kubectl` against the stand-in: what a user types and sees.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube_standin::{ApiServer, KubectlOutput};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn widget(size: u32) -> String {
    format!(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w, labels: {{app: demo}}}}\nspec: {{size: {size}}}\n"
    )
}

const NODE: &str = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
  "status": {"conditions": [{"type": "Ready", "status": "True"}]}}"#;

/// kubectl for the stand-in, and a directory for the manifests it applies.
struct Kubectl {
    kubectl: kube_standin::Kubectl,
    dir: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        self.kubectl.command(args)
    }

    async fn run(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl.run(args).await.expect("kubectl runs")
    }

    /// Runs and asserts success and the exact stdout.
    async fn expect(&self, args: &[&str], stdout: &str) {
        let out = self.run(args).await;
        assert!(out.ok, "kubectl {args:?} failed: {}", out.stderr);
        assert_eq!(out.stdout.trim_end(), stdout, "kubectl {args:?}");
    }

    /// Patches the widget `w` (`options` such as `--type=merge`) and
    /// checks that kubectl says so.
    async fn patch_widget(&self, options: &[&str], patch: &str) {
        let args: Vec<&str> = [&["patch", "widget", "w"][..], options, &["-p", patch]].concat();
        self.expect(&args, "widget.example.com/w patched").await;
    }

    fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, content).expect("write manifest");
        p.display().to_string()
    }
}

/// Splits a table line into its columns.
fn cols(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

async fn next_line_matching(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    want: impl Fn(&[&str]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        seen.push(line.clone());
        if want(&cols(&line)) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_the_stand_in() {
    if !kube_standin::Kubectl::installed() {
        eprintln!("!!!!! SKIPPED kubectl_drives_the_stand_in: no `kubectl` on PATH !!!!!");
        return;
    }
    let server = ApiServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let k = Kubectl {
        kubectl: server.kubectl(tmp.path()).expect("kubeconfig"),
        dir: tmp.path().to_path_buf(),
    };
    run_scenario(&k, tmp.path()).await;
    server.shutdown().await;
}

async fn run_scenario(k: &Kubectl, _dir: &Path) {
    // Client-side apply of a CRD and a custom resource, with validation on.
    let crd = k.file("crd.yaml", CRD);
    k.expect(
        &["apply", "-f", &crd],
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created",
    )
    .await;
    let w1 = k.file("w1.yaml", &widget(1));
    k.expect(&["apply", "-f", &w1], "widget.example.com/w created")
        .await;
    k.expect(&["apply", "-f", &w1], "widget.example.com/w unchanged")
        .await;

    // Server-side apply of a change (taking over the field from client-side apply).
    let w2 = k.file("w2.yaml", &widget(2));
    let out = k.run(&["apply", "--server-side", "-f", &w2]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\": .spec.size"
        ),
        "{}",
        out.stderr
    );
    k.expect(
        &["apply", "--server-side", "--force-conflicts", "-f", &w2],
        "widget.example.com/w serverside-applied",
    )
    .await;
    k.expect(
        &[
            "get",
            "widget",
            "w",
            "-o",
            "jsonpath={.spec.size} {.metadata.generation}",
        ],
        "2 2",
    )
    .await;

    // Printer columns.
    let out = k.run(&["get", "widgets"]).await;
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(cols(lines[0]), ["NAME", "SIZE", "READY", "AGE"]);
    assert_eq!(&cols(lines[1])[..2], ["w", "2"]);
    assert_eq!(lines.len(), 2);
    k.expect(&["get", "wd", "-o", "name"], "widget.example.com/w")
        .await;

    // `get -w` streams the update.
    let mut watch = k
        .command(&["get", "widgets", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("get -w starts");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    assert!(
        next_line_matching(&mut lines, &mut seen, |c| c.first() == Some(&"w")
            && c.get(1) == Some(&"2"))
        .await,
        "{seen:?}"
    );
    k.patch_widget(&["--type=merge"], r#"{"spec":{"size":3}}"#)
        .await;
    assert!(
        next_line_matching(&mut lines, &mut seen, |c| c.first() == Some(&"w")
            && c.get(1) == Some(&"3"))
        .await,
        "{seen:?}"
    );
    assert_eq!(cols(&seen[0]), ["NAME", "SIZE", "READY", "AGE"]);
    watch.kill().await.expect("stop get -w");

    // Imperative creation (kubectl sends protobuf for built-in kinds).
    k.expect(
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=key=hi!",
        ],
        "secret/creds created",
    )
    .await;
    k.expect(
        &[
            "get",
            "secret",
            "creds",
            "-o",
            "jsonpath={.type} {.data.key}",
        ],
        "Opaque aGkh",
    )
    .await;

    // Nodes and labels.
    let node = k.file("node.json", NODE);
    k.expect(&["create", "-f", &node], "node/n1 created").await;
    k.expect(&["label", "node", "n1", "foo=bar"], "node/n1 labeled")
        .await;
    let out = k.run(&["get", "nodes", "-l", "foo=bar"]).await;
    assert!(out.ok, "{}", out.stderr);
    let rows: Vec<Vec<&str>> = out.stdout.lines().map(cols).collect();
    assert_eq!(rows[0][..3], ["NAME", "STATUS", "AGE"]);
    assert_eq!(rows[1][..2], ["n1", "Ready"]);
    let out = k.run(&["get", "nodes", "-l", "foo!=bar"]).await;
    assert_eq!(
        (out.ok, out.stdout.as_str(), out.stderr.trim()),
        (true, "", "No resources found")
    );

    // `wait` returns once a Ready=True condition is patched into status.
    let waiter = k
        .command(&["wait", "--for=condition=Ready", "widget/w", "--timeout=30s"])
        .stdout(Stdio::piped())
        .output();
    let waiter = tokio::spawn(waiter);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiter.is_finished(),
        "wait returned before the condition was set"
    );
    k.patch_widget(
        &["--subresource=status", "--type=merge"],
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Done"}]}}"#,
    )
    .await;
    let out = tokio::time::timeout(Duration::from_secs(40), waiter)
        .await
        .expect("wait finishes")
        .expect("join")
        .expect("kubectl wait runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "widget.example.com/w condition met"
    );
    let out = k.run(&["get", "widgets"]).await;
    assert_eq!(
        &cols(out.stdout.lines().nth(1).unwrap_or_default())[..3],
        ["w", "3", "True"]
    );

    // Deleting an object with a finalizer leaves it terminating until the finalizer goes.
    k.patch_widget(
        &["--type=merge"],
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    )
    .await;
    k.expect(
        &["delete", "widget", "w", "--wait=false"],
        "widget.example.com \"w\" deleted",
    )
    .await;
    let out = k
        .run(&[
            "get",
            "widget",
            "w",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(
        out.ok && out.stdout.ends_with('Z'),
        "deletionTimestamp: {:?} {}",
        out.stdout,
        out.stderr
    );
    k.patch_widget(
        &["--type=json"],
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    )
    .await;
    let out = k.run(&["get", "widget", "w"]).await;
    assert!(!out.ok);
    assert_eq!(
        out.stderr.trim(),
        "Error from server (NotFound): widgets.example.com \"w\" not found"
    );
}
