//! The Helm chart (`charts/swarmseed`) as a platform admin meets it: linted
//! and rendered by the real Helm engine (the `helm-python-sdk` package, via
//! `e2e/helm/render.py`), shipping exactly the generated CRD, rendering the
//! RBAC, security settings and wiring the binaries rely on, and applying
//! cleanly with the real `kubectl` against the API stand-in.
//!
//! Needs `python3` with `helm_python` and `kubectl` on PATH: run
//! `e2e/setup.sh`. Nothing is skipped: a missing tool fails the test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube_standin::{ApiServer, KubectlOutput};
use serde_json::{Value, json};
use swarmseed_core::label;
use tokio::process::Command;

const SETUP_HINT: &str = "run e2e/setup.sh (installs helm-python-sdk; kubectl must be on PATH)";
const NAMESPACE: &str = "swarmseed-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn all_values() -> PathBuf {
    repo().join("e2e/helm/all-values.yaml")
}

/// What `render.py` produced: its JSON report and the files it wrote.
struct Rendered {
    report: Value,
    dir: tempfile::TempDir,
}

impl Rendered {
    fn objects(&self) -> &[Value] {
        self.report["objects"].as_array().map_or(&[], Vec::as_slice)
    }

    /// `(kind, namespace, name)` of every rendered object.
    fn ids(&self) -> BTreeSet<(String, String, String)> {
        self.objects().iter().map(id).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects()
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered; have {:?}", self.ids()))
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn id(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn ids(list: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .map(|(k, ns, n)| ((*k).to_string(), (*ns).to_string(), (*n).to_string()))
        .collect()
}

/// Runs `e2e/helm/render.py` (lint + render) with these values files.
/// `Err` carries the report or stderr when lint or rendering failed.
async fn try_render(values: &[PathBuf], namespace: &str) -> Result<Rendered, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("e2e/helm/render.py"))
        .arg("--chart")
        .arg(repo().join("charts/swarmseed"))
        .args(["--release", "swarmseed", "--namespace", namespace])
        .arg("--out")
        .arg(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("render.py finishes within 60 s")
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {SETUP_HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(
        out.status.code(),
        Some(2),
        "render.py cannot use the Helm SDK: {stderr}\n{SETUP_HINT}"
    );
    if !out.status.success() {
        return Err(format!("{stdout}\n{stderr}"));
    }
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("render.py printed no JSON report ({e}): {stdout}\n{stderr}"));
    Ok(Rendered { report, dir })
}

async fn render(values: &[PathBuf], namespace: &str) -> Rendered {
    let r = try_render(values, namespace)
        .await
        .unwrap_or_else(|e| panic!("lint/render failed:\n{e}"));
    assert_eq!(
        r.report["lint_errors"],
        json!([]),
        "lint errors: {}",
        r.report["lint"]
    );
    // Strict lint: no warnings either (severity 2 = warning).
    for m in r.report["lint"]["messages"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(m["severity"].as_i64() < Some(2), "lint warning: {m}");
    }
    r
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let v = if e.get("value").is_some() {
                e["value"].clone()
            } else {
                e["valueFrom"].clone()
            };
            (e["name"].as_str().unwrap_or_default().to_string(), v)
        })
        .collect()
}

fn env(container: &Value, name: &str) -> Value {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("env {name} not set in {}", container["name"]))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path(c: &Value, volume: &str) -> String {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("volume {volume} not mounted"))
        .to_string()
}

fn port(c: &Value, name: &str) -> i64 {
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no port {name}"))
}

fn field_ref(path: &str) -> Value {
    json!({"fieldRef": {"fieldPath": path}})
}

/// The hardening both containers share.
fn assert_locked_down(c: &Value) {
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    assert!(sc["capabilities"].get("add").is_none(), "{sc}");
    assert_ne!(sc["privileged"], true, "{sc}");
}

/// Every label of `subset` is on `labels`.
fn has_labels(labels: &Value, subset: &Value) -> bool {
    subset
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels[k] == *v)
}

/// The rules the operator's code needs, cluster-wide (least privilege).
fn expected_cluster_rules(secrets: bool) -> Value {
    let mut rules = vec![
        json!({"apiGroups": ["swarmseed.io"], "resources": ["datasets"], "verbs": ["list", "watch", "patch"]}),
        json!({"apiGroups": ["swarmseed.io"], "resources": ["datasets/status"], "verbs": ["patch"]}),
        json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch", "patch"]}),
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
    ];
    if secrets {
        rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}));
    }
    Value::Array(rules)
}

/// The rules in the operator's namespace.
fn expected_namespace_rules(lease: Option<&str>) -> Value {
    let mut rules =
        vec![json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]})];
    if let Some(lease) = lease {
        rules.push(
            json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}),
        );
        rules.push(
            json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": [lease], "verbs": ["get", "update"]}),
        );
    }
    Value::Array(rules)
}

#[test]
fn chart_ships_the_generated_crd() {
    let generated = repo().join("crds/datasets.swarmseed.io.yaml");
    let shipped = repo().join("charts/swarmseed/crds/datasets.swarmseed.io.yaml");
    let a = std::fs::read_to_string(&generated).expect("read crds/");
    let b = std::fs::read_to_string(&shipped).expect("read the chart's crds/");
    assert!(
        a == b,
        "{} differs from {}: copy it over (cp {} {})",
        shipped.display(),
        generated.display(),
        generated.display(),
        shipped.display()
    );
    // Nothing else in the chart's crds/ (Helm would install it too).
    let extra: Vec<_> = std::fs::read_dir(repo().join("charts/swarmseed/crds"))
        .expect("list the chart's crds/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "datasets.swarmseed.io.yaml")
        .collect();
    assert!(
        extra.is_empty(),
        "unexpected files in the chart's crds/: {extra:?}"
    );
}

#[tokio::test]
async fn default_values_lint_and_render_a_least_privilege_install() {
    let r = render(&[], NAMESPACE).await;
    let ns = NAMESPACE;
    assert_eq!(
        r.ids(),
        ids(&[
            ("NetworkPolicy", ns, "swarmseed-agent"),
            ("NetworkPolicy", ns, "swarmseed-operator"),
            ("PodDisruptionBudget", ns, "swarmseed-operator"),
            ("ServiceAccount", ns, "swarmseed-agent"),
            ("ServiceAccount", ns, "swarmseed-operator"),
            ("Secret", ns, "swarmseed-control-token"),
            ("ClusterRole", "", "swarmseed-operator"),
            ("ClusterRoleBinding", "", "swarmseed-operator"),
            ("Role", ns, "swarmseed-operator"),
            ("RoleBinding", ns, "swarmseed-operator"),
            ("Service", ns, "swarmseed-agent"),
            ("Service", ns, "swarmseed-operator-metrics"),
            ("DaemonSet", ns, "swarmseed-agent"),
            ("Deployment", ns, "swarmseed-operator"),
        ])
    );

    // Helm loaded the CRD from the chart's crds/ (installed before templates).
    let crds = r.report["crds"].as_array().expect("crds");
    assert_eq!(crds.len(), 1);
    assert_eq!(
        crds[0]["object"]["metadata"]["name"],
        "datasets.swarmseed.io"
    );

    // Every object carries the standard labels.
    for o in r.objects() {
        let l = &o["metadata"]["labels"];
        for key in [
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(l.get(key).is_some(), "{:?} lacks label {key}", id(o));
        }
        assert_eq!(l["app.kubernetes.io/version"], "0.1.0");
    }

    // The agent: found by the operator through its Pods' labels; knows its
    // node from the downward API; writes only the hostPath; no API token.
    let ds = r.get("DaemonSet", "swarmseed-agent");
    let pod = &ds["spec"]["template"];
    let agent_labels: serde_json::Map<String, Value> = label::AGENT_POD_LABELS
        .iter()
        .map(|&(k, v)| (k.to_owned(), json!(v)))
        .collect();
    assert!(has_labels(
        &pod["metadata"]["labels"],
        &Value::Object(agent_labels)
    ));
    assert!(has_labels(
        &pod["metadata"]["labels"],
        &ds["spec"]["selector"]["matchLabels"]
    ));
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["serviceAccountName"], "swarmseed-agent");
    assert!(pod["spec"].get("hostNetwork").is_none());
    assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let agent = container(ds, "agent");
    assert_locked_down(agent);
    assert_eq!(env(agent, "NODE_NAME"), field_ref("spec.nodeName"));
    assert_eq!(env(agent, "POD_IP"), field_ref("status.podIP"));
    assert_eq!(env(agent, "SWARMSEED_ROOT"), "/var/lib/swarmseed");
    assert_eq!(env(agent, "SWARMSEED_CONTROL_LISTEN"), "0.0.0.0:7400");
    assert_eq!(env(agent, "SWARMSEED_PEER_LISTEN"), "0.0.0.0:7401");
    assert_eq!(env(agent, "SWARMSEED_ADMIN_LISTEN"), "0.0.0.0:7402");
    assert_eq!(env(agent, "SWARMSEED_PEER_HANDSHAKE_TIMEOUT"), "5s");
    assert_eq!(env(agent, "SWARMSEED_PEER_MAX_HANDSHAKES"), "256");
    assert_eq!(env(agent, "SWARMSEED_PEER_MAX_HANDSHAKES_PER_SOURCE"), "16");
    assert_eq!(
        (
            port(agent, "control"),
            port(agent, "peer"),
            port(agent, "admin")
        ),
        (7400, 7401, 7402)
    );
    let store = volume(ds, "store");
    assert_eq!(
        store["hostPath"],
        json!({"path": "/var/lib/swarmseed", "type": "DirectoryOrCreate"})
    );
    assert_eq!(mount_path(agent, "store"), "/var/lib/swarmseed");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["port"], "admin");
    }
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The operator: leader-elected replicas, non-root, read-only.
    let deploy = r.get("Deployment", "swarmseed-operator");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "swarmseed-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let op = container(deploy, "operator");
    assert_locked_down(op);
    assert_eq!(op["securityContext"]["runAsNonRoot"], true);
    // Leader election is the binary's default: no flag needed.
    assert!(op.get("args").is_none(), "{}", op["args"]);
    assert_eq!(env(op, "SWARMSEED_AGENT_NAMESPACE"), NAMESPACE);
    assert_eq!(env(op, "SWARMSEED_CONTROL_PORT"), "7400");
    assert_eq!(env(op, "SWARMSEED_LEASE_NAME"), "swarmseed-operator");
    assert_eq!(env(op, "SWARMSEED_ADMIN_LISTEN"), "0.0.0.0:8080");
    assert_eq!(env(op, "SWARMSEED_AGENT_CALL_TIMEOUT"), "15s");
    assert_eq!(env(op, "SWARMSEED_MAX_PEERS"), "16");
    assert_eq!(env(op, "POD_NAMESPACE"), field_ref("metadata.namespace"));
    assert_eq!(env(op, "POD_NAME"), field_ref("metadata.name"));
    assert_eq!(port(op, "admin"), 8080);
    assert_eq!(op["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(op["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(op["resources"]["requests"].get("memory").is_some());
    assert_eq!(
        r.get("PodDisruptionBudget", "swarmseed-operator")["spec"]["minAvailable"],
        1
    );

    // One control token, generated by the chart, mounted into both.
    let secret = r.get("Secret", "swarmseed-control-token");
    let token = secret["data"]["token"].as_str().expect("token");
    assert_eq!(token.len(), 64, "48 random characters, base64-encoded");
    for (workload, c) in [(ds, agent), (deploy, op)] {
        let v = volume(workload, "control-token");
        assert_eq!(v["secret"]["secretName"], "swarmseed-control-token");
        assert_eq!(
            v["secret"]["items"],
            json!([{"key": "token", "path": "token"}])
        );
        assert_eq!(
            env(c, "SWARMSEED_CONTROL_TOKEN_FILE"),
            format!("{}/token", mount_path(c, "control-token"))
        );
    }
    assert_eq!(
        r.get("ServiceAccount", "swarmseed-agent")["automountServiceAccountToken"],
        false
    );

    // RBAC: exactly what the operator's code calls.
    assert_eq!(
        r.get("ClusterRole", "swarmseed-operator")["rules"],
        expected_cluster_rules(true)
    );
    assert_eq!(
        r.get("Role", "swarmseed-operator")["rules"],
        expected_namespace_rules(Some("swarmseed-operator"))
    );
    let subject =
        json!([{"kind": "ServiceAccount", "name": "swarmseed-operator", "namespace": NAMESPACE}]);
    assert_eq!(
        r.get("ClusterRoleBinding", "swarmseed-operator")["subjects"],
        subject
    );
    assert_eq!(
        r.get("RoleBinding", "swarmseed-operator")["subjects"],
        subject
    );

    // NetworkPolicy: data ports only from agents and the operator.
    let np = r.get("NetworkPolicy", "swarmseed-agent");
    let ingress = np["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": 7400, "protocol": "TCP"}, {"port": 7401, "protocol": "TCP"}])
    );
    let from: Vec<&str> = ingress[0]["from"]
        .as_array()
        .expect("from")
        .iter()
        .filter_map(|p| p["podSelector"]["matchLabels"]["app.kubernetes.io/component"].as_str())
        .collect();
    assert_eq!(from, ["agent", "operator"]);
    assert_eq!(
        ingress[1],
        json!({"ports": [{"port": 7402, "protocol": "TCP"}]})
    );

    // The agents' Service is headless.
    assert_eq!(
        r.get("Service", "swarmseed-agent")["spec"]["clusterIP"],
        "None"
    );

    // NOTES tell what to do next.
    let notes = r.report["notes"].as_str().expect("notes");
    for want in [
        "kind: Dataset",
        "kubectl -n ml wait --for=condition=Ready dataset/llama",
        "hostPath:",
        "/var/lib/swarmseed/datasets/ml/llama",
        "status.nodeLabel",
    ] {
        assert!(notes.contains(want), "NOTES.txt lacks {want:?}:\n{notes}");
    }
}

#[tokio::test]
async fn every_option_renders_as_configured() {
    let r = render(&[all_values()], NAMESPACE).await;
    let ns = NAMESPACE;
    assert_eq!(
        r.ids(),
        ids(&[
            ("NetworkPolicy", ns, "seed-agent"),
            ("NetworkPolicy", ns, "seed-operator"),
            ("PodDisruptionBudget", ns, "seed-operator"),
            ("ServiceAccount", ns, "seed-node-agent"),
            ("ClusterRole", "", "seed-operator"),
            ("ClusterRoleBinding", "", "seed-operator"),
            ("Role", ns, "seed-operator"),
            ("Role", "ml", "seed-operator-secrets"),
            ("Role", "research", "seed-operator-secrets"),
            ("RoleBinding", ns, "seed-operator"),
            ("RoleBinding", "ml", "seed-operator-secrets"),
            ("RoleBinding", "research", "seed-operator-secrets"),
            ("Service", ns, "seed-agent"),
            ("Service", ns, "seed-operator-metrics"),
            ("DaemonSet", ns, "seed-agent"),
            ("Deployment", ns, "seed-operator"),
            ("ServiceMonitor", "monitoring", "seed-agent"),
            ("ServiceMonitor", "monitoring", "seed-operator"),
        ]),
        "no Secret (existingSecret) and no operator ServiceAccount (create: false)"
    );
    for o in r.objects() {
        assert_eq!(
            o["metadata"]["labels"]["team"],
            "ml-platform",
            "{:?}",
            id(o)
        );
    }

    let deploy = r.get("Deployment", "seed-operator");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(pod["serviceAccountName"], "byo-operator");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(pod["terminationGracePeriodSeconds"], 45);
    assert!(pod["affinity"].get("nodeAffinity").is_some());
    assert!(pod["affinity"].get("podAntiAffinity").is_none());
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    let op = container(deploy, "operator");
    assert_eq!(
        op["image"],
        "registry.example.com/swarmseed/operator@sha256:0000000000000000000000000000000000000000000000000000000000000001"
    );
    assert_eq!(op["args"], json!(["--max-peers=8"]));
    assert_eq!(env(op, "SWARMSEED_CONTROL_PORT"), "7500");
    assert_eq!(env(op, "SWARMSEED_LEASE_NAME"), "seed-leader");
    assert_eq!(env(op, "SWARMSEED_ADMIN_LISTEN"), "0.0.0.0:9090");
    assert_eq!(env(op, "SWARMSEED_AGENT_CALL_TIMEOUT"), "20s");
    assert_eq!(env(op, "HTTPS_PROXY"), "http://proxy.example.com:3128");
    assert_eq!(env(op, "RUST_LOG"), "swarmseed_operator=debug,info");
    assert_eq!(port(op, "admin"), 9090);
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["labels"]["tier"],
        "control"
    );
    assert_eq!(
        r.get("PodDisruptionBudget", "seed-operator")["spec"]["minAvailable"],
        2
    );

    let ds = r.get("DaemonSet", "seed-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["serviceAccountName"], "seed-node-agent");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["nodeSelector"],
        json!({"nvidia.com/gpu.present": "true"})
    );
    assert_eq!(pod["tolerations"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    let agent = container(ds, "agent");
    assert_locked_down(agent);
    assert_eq!(
        agent["image"],
        "registry.example.com/swarmseed/agent:0.1.0-rc1"
    );
    assert_eq!(agent["args"], json!(["--origin-retries=8"]));
    assert_eq!(env(agent, "SWARMSEED_ROOT"), "/mnt/nvme/swarmseed");
    assert_eq!(env(agent, "SWARMSEED_CONTROL_LISTEN"), "0.0.0.0:7500");
    assert_eq!(env(agent, "SWARMSEED_PEER_LISTEN"), "0.0.0.0:7501");
    assert_eq!(env(agent, "SWARMSEED_ADMIN_LISTEN"), "0.0.0.0:7502");
    assert_eq!(env(agent, "SWARMSEED_FALLBACK_AFTER"), "45s");
    assert_eq!(env(agent, "SWARMSEED_ORIGIN_TIMEOUT"), "120s");
    assert_eq!(env(agent, "SWARMSEED_ORIGIN_RETRIES"), "8");
    assert_eq!(env(agent, "SWARMSEED_PEER_STALL_TIMEOUT"), "20s");
    assert_eq!(env(agent, "SWARMSEED_LOG_FORMAT"), "text");
    assert_eq!(env(agent, "AWS_CREDENTIALS_FROM_ENVIRONMENT"), "true");
    assert_eq!(
        volume(ds, "store")["hostPath"]["path"],
        "/mnt/nvme/swarmseed"
    );
    assert_eq!(mount_path(agent, "store"), "/mnt/nvme/swarmseed");
    assert_eq!(
        r.get("ServiceAccount", "seed-node-agent")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/swarmseed-agent"
    );

    // A Secret the admin brought, under its own key, in both pods.
    for workload in [ds, deploy] {
        let v = volume(workload, "control-token");
        assert_eq!(v["secret"]["secretName"], "byo-control-token");
        assert_eq!(
            v["secret"]["items"],
            json!([{"key": "control", "path": "token"}])
        );
    }

    // Secrets only in the listed namespaces; the Lease by its name.
    assert_eq!(
        r.get("ClusterRole", "seed-operator")["rules"],
        expected_cluster_rules(false)
    );
    let secret_rules = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]);
    let secret_roles: Vec<&Value> = r
        .objects()
        .iter()
        .filter(|o| o["kind"] == "Role" && o["metadata"]["name"] == "seed-operator-secrets")
        .collect();
    assert_eq!(secret_roles.len(), 2);
    for role in secret_roles {
        assert_eq!(role["rules"], secret_rules);
    }
    assert_eq!(
        r.get("Role", "seed-operator")["rules"],
        expected_namespace_rules(Some("seed-leader"))
    );
    assert_eq!(
        r.get("ClusterRoleBinding", "seed-operator")["subjects"][0]["name"],
        "byo-operator"
    );

    let np = r.get("NetworkPolicy", "seed-agent");
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"port": 7500, "protocol": "TCP"}, {"port": 7501, "protocol": "TCP"}])
    );
    let metrics_from = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    assert_eq!(np["spec"]["ingress"][1]["from"], metrics_from);
    assert_eq!(
        r.get("NetworkPolicy", "seed-operator")["spec"]["ingress"][0]["from"],
        metrics_from
    );

    let sm = r.get("ServiceMonitor", "seed-agent");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "admin", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}])
    );
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let notes = r.report["notes"].as_str().expect("notes");
    assert!(
        notes.contains("/mnt/nvme/swarmseed/datasets/ml/llama"),
        "{notes}"
    );
    assert!(notes.contains("host network"), "{notes}");
}

#[tokio::test]
async fn leader_election_off_needs_a_single_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = dir.path().join("two.yaml");
    std::fs::write(&two, "operator:\n  leaderElection:\n    enabled: false\n").expect("write");
    let err = match try_render(std::slice::from_ref(&two), NAMESPACE).await {
        Ok(_) => panic!("two replicas without leader election rendered"),
        Err(e) => e,
    };
    assert!(
        err.contains("needs operator.leaderElection.enabled=true"),
        "{err}"
    );

    let one = dir.path().join("one.yaml");
    std::fs::write(
        &one,
        "operator:\n  replicas: 1\n  leaderElection:\n    enabled: false\n",
    )
    .expect("write");
    let r = render(&[one], NAMESPACE).await;
    let op = container(r.get("Deployment", "swarmseed-operator"), "operator");
    assert_eq!(op["args"], json!(["--leader-election=false"]));
    assert!(
        !r.ids()
            .iter()
            .any(|(kind, _, _)| kind == "PodDisruptionBudget"),
        "a PDB with minAvailable 1 would block every drain of a single replica"
    );
    assert_eq!(
        r.get("Role", "swarmseed-operator")["rules"],
        expected_namespace_rules(None)
    );
}

// ---- kubectl apply against the stand-in ----

/// kubectl for the stand-in, with the checks these tests make of it.
struct Kubectl(kube_standin::Kubectl);

impl Kubectl {
    async fn run(&self, args: &[&str]) -> KubectlOutput {
        self.0
            .run(args)
            .await
            .unwrap_or_else(|e| panic!("cannot run kubectl ({e}): {SETUP_HINT}"))
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed:\n{}\n{}",
            out.stderr, out.stdout
        );
        out.stdout
    }

    /// `kubectl apply -f file`: every object reported with `verb`.
    async fn apply(&self, file: &str, count: usize, verb: &str) {
        let stdout = self.ok(&["apply", "-f", file]).await;
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), count, "kubectl apply -f {file}:\n{stdout}");
        for line in lines {
            // A PDB's selector has patchStrategy=replace, so kubectl's patch
            // of an unchanged PDB is never empty: a real cluster says
            // "configured" too.
            let verb = if verb == "unchanged" && line.starts_with("poddisruptionbudget.policy/") {
                "configured"
            } else {
                verb
            };
            assert!(
                line.ends_with(&format!(" {verb}")),
                "kubectl apply -f {file}: expected {verb}:\n{stdout}"
            );
        }
    }
}

/// `want` is contained in `have`: every field of every map, lists element
/// by element. The server may add fields (metadata), never lose or change one.
fn contained(want: &Value, have: &Value, path: &str) -> Result<(), String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                let sub = format!("{path}.{k}");
                contained(v, h.get(k).unwrap_or(&Value::Null), &sub)?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => {
            for (i, (a, b)) in w.iter().zip(h).enumerate() {
                contained(a, b, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (w, h) if w == h => Ok(()),
        (w, h) => Err(format!("{path}: rendered {w}, stored {h}")),
    }
}

const SERVICE_MONITOR_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: servicemonitors, singular: servicemonitor, kind: ServiceMonitor, listKind: ServiceMonitorList, shortNames: [smon], categories: [prometheus-operator]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

/// What all-values.yaml expects to exist before the install.
const ALL_VALUES_PREREQUISITES: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: byo-operator, namespace: seed-system}
---
apiVersion: v1
kind: Secret
metadata: {name: byo-control-token, namespace: seed-system}
type: Opaque
stringData: {control: an-admin-chosen-token-of-enough-length}
"#;

/// Installs the rendered chart the way `helm install` orders it: the
/// release namespace, what the values expect to exist (`prereq`), the CRDs,
/// then the objects; a second apply changes nothing; every object reads
/// back as rendered.
async fn install(
    k: &Kubectl,
    r: &Rendered,
    namespace: &str,
    crd_verb: &str,
    prereq: Option<(&Path, usize)>,
) {
    k.ok(&["create", "namespace", namespace]).await;
    if let Some((file, count)) = prereq {
        k.apply(&file.display().to_string(), count, "created").await;
    }
    k.apply(&r.file("crds.yaml"), 1, crd_verb).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/datasets.swarmseed.io",
        "--timeout=20s",
    ])
    .await;
    let n = r.objects().len();
    k.apply(&r.file("manifests.yaml"), n, "created").await;
    k.apply(&r.file("manifests.yaml"), n, "unchanged").await;

    let list: Value = serde_json::from_str(
        &k.ok(&["get", "-f", &r.file("manifests.yaml"), "-o", "json"])
            .await,
    )
    .expect("kubectl get -o json");
    let stored = list["items"].as_array().expect("items");
    assert_eq!(stored.len(), n);
    for want in r.objects() {
        let have = stored
            .iter()
            .find(|o| id(o) == id(want))
            .unwrap_or_else(|| panic!("{:?} not stored", id(want)));
        if let Err(e) = contained(want, have, "") {
            panic!("{:?} changed on the way in: {e}", id(want));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_applies_with_kubectl() {
    let defaults = render(&[], NAMESPACE).await;
    let everything = render(&[all_values()], "seed-system").await;

    let server = ApiServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("stand-in starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let k = Kubectl(server.kubectl(tmp.path()).expect("kubeconfig"));

    // Default values into swarmseed-system.
    install(&k, &defaults, NAMESPACE, "created", None).await;

    // The example Dataset in NOTES.txt is accepted by the installed CRD.
    let notes = defaults.report["notes"].as_str().expect("notes");
    let example: String = notes
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("apiVersion: swarmseed.io/"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{}\n", l.get(5..).unwrap_or_default()))
        .collect();
    assert!(example.contains("kind: Dataset"), "{notes}");
    let dataset = tmp.path().join("dataset.yaml");
    std::fs::write(&dataset, &example).expect("write dataset");
    k.ok(&["create", "namespace", "ml"]).await;
    let out = k.ok(&["apply", "-f", &dataset.display().to_string()]).await;
    assert_eq!(out.trim(), "dataset.swarmseed.io/llama created");

    // Every option, as a second release in seed-system next to the first
    // (the CRD is there already), after what its values expect to exist.
    for ns in ["research", "monitoring"] {
        k.ok(&["create", "namespace", ns]).await;
    }
    let smon = tmp.path().join("servicemonitor-crd.yaml");
    std::fs::write(&smon, SERVICE_MONITOR_CRD).expect("write");
    k.apply(&smon.display().to_string(), 1, "created").await;
    let prereq = tmp.path().join("prerequisites.yaml");
    std::fs::write(&prereq, ALL_VALUES_PREREQUISITES).expect("write");
    install(
        &k,
        &everything,
        "seed-system",
        "unchanged",
        Some((&prereq, 2)),
    )
    .await;

    // The operator finds exactly its agents by these labels (no agent Pod
    // runs here: the stand-in schedules nothing, so the DaemonSets stand in).
    let selected = k
        .ok(&["get", "ds", "-A", "-l", label::AGENT_SELECTOR, "-o", "name"])
        .await;
    assert_eq!(
        selected.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "daemonset.apps/seed-agent",
            "daemonset.apps/swarmseed-agent"
        ])
    );
    server.shutdown().await;
}

async fn control_token(k: &Kubectl) -> String {
    k.ok(&[
        "get",
        "secret",
        "-n",
        NAMESPACE,
        "swarmseed-control-token",
        "-o",
        "jsonpath={.data.token}",
    ])
    .await
}

/// Runs a real Helm release operation (`render.py --action ...`) against
/// the cluster in `kubeconfig`; returns the release JSON.
async fn helm_release(action: &str, kubeconfig: &Path, values: &[PathBuf]) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("e2e/helm/render.py"))
        .args([
            "--action",
            action,
            "--release",
            "swarmseed",
            "--namespace",
            NAMESPACE,
        ])
        .arg("--chart")
        .arg(repo().join("charts/swarmseed"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--timeout", "30"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("helm {action} hung"))
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {SETUP_HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "render.py cannot use the Helm SDK: {stderr}\n{SETUP_HINT}"
    );
    assert!(
        out.status.success(),
        "helm {action} failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("helm {action}: no JSON ({e}): {stdout}"))
}

/// The real `helm install`, `upgrade` and `uninstall` (Helm's Go SDK) against
/// the stand-in: `lookup` keeps the generated control token across an
/// upgrade, so running agents and the operator keep agreeing on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_keeps_the_control_token() {
    let server = ApiServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("stand-in starts");
    let tmp = tempfile::tempdir().expect("tempdir");
    let k = Kubectl(server.kubectl(tmp.path()).expect("kubeconfig"));
    k.ok(&["create", "namespace", NAMESPACE]).await;

    let installed = helm_release("install", &k.0.kubeconfig, &[]).await;
    assert_eq!(installed["status"], "deployed", "{installed}");
    assert_eq!(installed["revision"], 1);
    assert!(
        installed["notes"]
            .as_str()
            .is_some_and(|n| n.contains("kubectl -n ml wait --for=condition=Ready dataset/llama")),
        "{}",
        installed["notes"]
    );
    let before = control_token(&k).await;
    assert_eq!(before.len(), 64, "{before}");
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/datasets.swarmseed.io",
        "--timeout=20s",
    ])
    .await;

    let three = tmp.path().join("three.yaml");
    std::fs::write(&three, "operator:\n  replicas: 3\n").expect("write");
    let upgraded = helm_release("upgrade", &k.0.kubeconfig, &[three]).await;
    assert_eq!(upgraded["revision"], 2, "{upgraded}");
    assert_eq!(
        control_token(&k).await,
        before,
        "the upgrade replaced the control token"
    );
    let replicas = k
        .ok(&[
            "get",
            "deploy",
            "-n",
            NAMESPACE,
            "swarmseed-operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(replicas, "3");

    // Uninstall removes the release's objects; the CRD (and so every
    // Dataset) stays, as Helm never deletes crds/.
    helm_release("uninstall", &k.0.kubeconfig, &[]).await;
    let left = k
        .ok(&[
            "get",
            "ds,deploy,secret,sa,role",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/instance=swarmseed",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(left.trim(), "", "left behind after uninstall");
    let cluster_left = k
        .ok(&[
            "get",
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/instance=swarmseed",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(cluster_left.trim(), "", "left behind after uninstall");
    k.ok(&["get", "crd", "datasets.swarmseed.io"]).await;
    server.shutdown().await;
}

/// `--help` of a binary built next to the `e2e` test binary.
async fn help_of(binary: &str) -> String {
    let path = Path::new(env!("CARGO_BIN_EXE_e2e")).with_file_name(binary);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --release --bins)",
        path.display()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(&path)
            .arg("--help")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{binary} --help hung"))
    .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(out.status.success(), "{binary} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every setting the chart passes (environment variables, flags) is one the
/// binary knows: a renamed flag fails here, not in a cluster.
#[tokio::test]
async fn chart_settings_are_flags_the_binaries_know() {
    let r = render(&[], NAMESPACE).await;
    let one = {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("one.yaml");
        std::fs::write(
            &f,
            "operator:\n  replicas: 1\n  leaderElection:\n    enabled: false\n",
        )
        .expect("write");
        render(&[f], NAMESPACE).await
    };
    for (binary, kind, name, container_name, rendered) in [
        (
            "swarmseed-agent",
            "DaemonSet",
            "swarmseed-agent",
            "agent",
            &r,
        ),
        (
            "swarmseed-operator",
            "Deployment",
            "swarmseed-operator",
            "operator",
            &r,
        ),
        (
            "swarmseed-operator",
            "Deployment",
            "swarmseed-operator",
            "operator",
            &one,
        ),
    ] {
        let help = help_of(binary).await;
        let c = container(rendered.get(kind, name), container_name);
        for (var, _) in env_of(c) {
            if var == "RUST_LOG" {
                continue; // tracing's filter, not a flag
            }
            assert!(
                help.contains(&format!("[env: {var}=")),
                "the chart sets {var}, which `{binary} --help` does not list:\n{help}"
            );
        }
        for arg in c["args"].as_array().into_iter().flatten() {
            let flag = arg
                .as_str()
                .and_then(|a| a.split('=').next())
                .expect("string arg");
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}[")),
                "the chart passes {flag}, which `{binary} --help` does not list:\n{help}"
            );
        }
    }
}
