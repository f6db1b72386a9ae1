//! The Helm chart grants the operator exactly the API access its code uses.
//!
//! Two operator replicas (one leads, one stands by) run against the API
//! stand-in as the chart's operator ServiceAccount ([`OPERATOR_USER`], named
//! with the kubeconfig's `as:`), and the stand-in records every request
//! with the attributes RBAC decides on. The run goes through every code path
//! that talks to the API: leader election, a Dataset with a Secret-backed
//! source seeded to Ready, nodes labelled, Events (created, and patched as a
//! series), two nodes deselected at once and unlabelled, and the Dataset
//! deleted (finalizer removed). The chart, rendered by the real Helm engine
//! with default values, must then allow every one of those requests (verb,
//! resource, namespace, resourceNames) and grant nothing that none of them
//! used.
//!
//! Needs what `operator.rs` and `helm_chart.rs` need: the release binaries
//! (`cargo build --release --bins`), `kubectl`, and `python3` with
//! `helm_python` (e2e/setup.sh); root for the node namespaces.

// Tests unwrap like tests do.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use swarmseed_harness::apiserver::AuditRecord;
use swarmseed_harness::kube_objects::AGENT_NAMESPACE;
use swarmseed_harness::origin::dataset::{DatasetSpec, generate_dataset};
use swarmseed_harness::seeding::{Binaries, OPERATOR_USER, SeedCluster, dataset_yaml};
use swarmseed_harness::{ClusterSpec, NodeSpec};

/// The chart's release namespace: the harness runs the agent Pods and the
/// leader Lease there, as the chart does.
const RELEASE_NAMESPACE: &str = AGENT_NAMESPACE;
const NS: &str = "ml";

/// One verb on one resource of one API group, as an RBAC rule names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    verb: String,
}

impl Access {
    fn of(r: &AuditRecord) -> Self {
        Self {
            group: r.group.clone(),
            resource: r.rbac_resource(),
            verb: r.verb.clone(),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{:<16} {} {}", self.verb, group, self.resource)
    }
}

/// One [`Access`] a rule bound to the operator grants, where and on what.
#[derive(Debug)]
struct Grant {
    access: Access,
    /// `None`: every namespace (a ClusterRole through a ClusterRoleBinding).
    namespace: Option<String>,
    /// `resourceNames`; empty: every name.
    names: Vec<String>,
    /// `Role ns/name` or `ClusterRole name`.
    from: String,
}

impl Grant {
    fn allows(&self, r: &AuditRecord) -> bool {
        self.access == Access::of(r)
            && self.namespace.as_ref().is_none_or(|ns| *ns == r.namespace)
            && (self.names.is_empty() || self.names.contains(&r.name))
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.access)?;
        if !self.names.is_empty() {
            write!(f, " (resourceNames {:?})", self.names)?;
        }
        write!(f, "  [{}]", self.from)
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
fn service_account(user: &str) -> (&str, &str) {
    let rest = user
        .strip_prefix("system:serviceaccount:")
        .unwrap_or_else(|| panic!("{user} is not a ServiceAccount"));
    rest.split_once(':')
        .unwrap_or_else(|| panic!("{user} is not a ServiceAccount"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Every grant the rendered `objects` bind to the ServiceAccount `sa_ns/sa`:
/// the rules of each ClusterRole or Role that a ClusterRoleBinding or
/// RoleBinding naming it refers to, expanded to one grant per group,
/// resource and verb.
fn grants_of(objects: &[Value], sa_ns: &str, sa: &str) -> Vec<Grant> {
    let find = |kind: &str, ns: &str, name: &str| {
        objects.iter().find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str().unwrap_or_default() == ns
        })
    };
    let mut grants = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let binding_ns = binding["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let names_sa = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa
                    && s["namespace"].as_str().unwrap_or(binding_ns) == sa_ns
            });
        if !names_sa {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let role_ns = if role_kind == "Role" { binding_ns } else { "" };
        let role = find(role_kind, role_ns, role_name).unwrap_or_else(|| {
            panic!("{binding} refers to {role_kind} {role_name}, which the chart does not render")
        });
        // A RoleBinding grants even a ClusterRole's rules in its namespace only.
        let namespace = (binding["kind"] == "RoleBinding").then(|| binding_ns.to_string());
        let from = if role_ns.is_empty() {
            format!("{role_kind} {role_name}")
        } else {
            format!("{role_kind} {role_ns}/{role_name}")
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "the operator needs no non-resource URLs: {rule}"
            );
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        grants.push(Grant {
                            access: Access {
                                group: group.clone(),
                                resource: resource.clone(),
                                verb,
                            },
                            namespace: namespace.clone(),
                            names: strings(&rule["resourceNames"]),
                            from: from.clone(),
                        });
                    }
                }
            }
        }
    }
    grants
}

/// The chart's objects as the real Helm engine renders them with default
/// values (through `e2e/helm/render.py`, as `helm_chart.rs` does).
async fn render_default_chart() -> Vec<Value> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let run = tokio::process::Command::new("python3")
        .arg(repo.join("e2e/helm/render.py"))
        .arg("--chart")
        .arg(repo.join("charts/swarmseed"))
        .args(["--release", "swarmseed", "--namespace", RELEASE_NAMESPACE])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("render.py finishes within 60 s")
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): run e2e/setup.sh"));
    assert!(
        out.status.success(),
        "render.py failed (run e2e/setup.sh for helm_python):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("render.py prints JSON");
    report["objects"].as_array().cloned().unwrap_or_default()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

/// Drives the operators through every code path that talks to the API;
/// returns the requests they made.
async fn operator_requests() -> Vec<AuditRecord> {
    swarmseed_harness::init_crypto();
    let bins = Binaries::beside_e2e().unwrap();
    let mut spec = ClusterSpec::new(3, &bins.agent);
    spec.nodes = (0..3)
        .map(|i| NodeSpec::new(format!("node-{i}")).label("gpu", "true"))
        .collect();
    spec.agent_args = vec!["--fallback-after".into(), "5s".into()];
    spec.audit_api = true;
    let mut c = SeedCluster::start(spec, bins).await.unwrap();
    // Leader election: operator-0 creates the Lease and renews it;
    // operator-1 reads it and stands by.
    c.start_operator("operator-1", &[]).unwrap();

    // A Dataset whose source credentials come from a Secret.
    c.kubectl(&["create", "namespace", NS]).await.unwrap();
    let token = [("HTTP_BEARER_TOKEN", "not-a-secret")];
    c.create_secret(NS, "origin-creds", &token).await.unwrap();
    let src = c.cluster.work_dir().join("origin-http");
    generate_dataset(&src, &DatasetSpec::tiny(5)).unwrap();
    let origin = c.cluster.start_http_origin(&src, 8080).await.unwrap();
    let manifest = dataset_yaml(
        NS,
        "weights",
        &json!({
            "source": { "uri": format!("{}/", origin.url()), "secretRef": { "name": "origin-creds" } },
            "nodeSelector": { "gpu": "true" },
        }),
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .await
        .unwrap();
    let waited = c
        .kubectl(&[
            "wait",
            "-n",
            NS,
            "--for=condition=Ready",
            "dataset/weights",
            "--timeout=120s",
        ])
        .await;
    if let Err(e) = waited {
        panic!("{e}\noperator log:\n{}", c.operator_log("operator-0"));
    }
    let status = c.dataset(NS, "weights").await.unwrap().unwrap()["status"].clone();
    let key = status["nodeLabel"].as_str().unwrap().to_string();
    assert_eq!(
        c.labelled_nodes(&key).await.unwrap(),
        names(&["node-0", "node-1", "node-2"])
    );

    // Two nodes stop matching at once: one reconcile removes both copies
    // and publishes two `Removed` Events on the same object, the second as
    // a patch of the first (an Event series); their labels go.
    c.kubectl(&[
        "patch",
        "dataset",
        "weights",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node-0"}}}"#,
    ])
    .await
    .unwrap();
    c.wait_for(
        "node-1 and node-2 unlabelled",
        Duration::from_secs(60),
        async || Ok((c.labelled_nodes(&key).await.unwrap() == names(&["node-0"])).then_some(())),
    )
    .await
    .unwrap();

    // Deletion: every copy and label, then the finalizer.
    c.delete_dataset(NS, "weights").await.unwrap();
    assert!(c.dataset(NS, "weights").await.unwrap().is_none());
    assert!(c.labelled_nodes(&key).await.unwrap().is_empty());

    // The leader renews every 2 s; long done by now, but do not race it.
    let operator = |r: &AuditRecord| r.user.as_deref() == Some(OPERATOR_USER);
    c.wait_for(
        "the leader renewed its Lease",
        Duration::from_secs(15),
        async || {
            let renewed = c
                .cluster
                .api_audit()
                .iter()
                .any(|r| operator(r) && r.resource == "leases" && r.verb == "update");
            Ok(renewed.then_some(()))
        },
    )
    .await
    .unwrap();
    let requests: Vec<AuditRecord> = c.cluster.api_audit().into_iter().filter(operator).collect();
    drop(origin);
    c.cluster.stop().await;
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_grants_the_operator_exactly_the_api_access_its_code_uses() {
    let objects = render_default_chart().await;
    let (sa_ns, sa) = service_account(OPERATOR_USER);
    assert_eq!(sa_ns, RELEASE_NAMESPACE);
    let grants = grants_of(&objects, sa_ns, sa);
    assert!(
        !grants.is_empty(),
        "the chart binds nothing to {sa_ns}/{sa}"
    );

    let requests = operator_requests().await;
    assert!(
        !requests.is_empty(),
        "the stand-in recorded no operator request"
    );

    // What was used, how often, and where (namespace/name).
    let mut used: BTreeMap<Access, (usize, BTreeSet<String>)> = BTreeMap::new();
    for r in &requests {
        let e = used.entry(Access::of(r)).or_default();
        e.0 += 1;
        e.1.insert(format!("{}/{}", r.namespace, r.name));
    }
    let granted: BTreeSet<Access> = grants.iter().map(|g| g.access.clone()).collect();
    let used_set: BTreeSet<Access> = used.keys().cloned().collect();

    let mut problems = Vec::new();
    for a in used_set.difference(&granted) {
        problems.push(format!("used but not granted:  {a}"));
    }
    for a in granted.difference(&used_set) {
        problems.push(format!("granted but not used:  {a}"));
    }
    // Finer: each request within some rule's namespace and resourceNames,
    // and each rule (with its scope and names) used by some request.
    let denied: BTreeSet<String> = requests
        .iter()
        .filter(|r| granted.contains(&Access::of(r)) && !grants.iter().any(|g| g.allows(r)))
        .map(|r| format!("{}  on {}/{}", Access::of(r), r.namespace, r.name))
        .collect();
    for d in denied {
        problems.push(format!("denied by scope or resourceNames:  {d}"));
    }
    for g in &grants {
        if used_set.contains(&g.access) && !requests.iter().any(|r| g.allows(r)) {
            problems.push(format!("rule never used:  {g}"));
        }
    }

    let table: Vec<String> = used
        .iter()
        .map(|(a, (n, on))| {
            let on: Vec<&String> = on.iter().take(4).collect();
            format!("  {a}  ×{n}  {on:?}")
        })
        .collect();
    eprintln!(
        "the operator's requests ({}):\n{}",
        requests.len(),
        table.join("\n")
    );
    assert!(
        problems.is_empty(),
        "the chart's operator RBAC does not match what the operator does:\n  {}\n\
         what the operator did:\n{}\nwhat the chart grants:\n  {}",
        problems.join("\n  "),
        table.join("\n"),
        grants
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
