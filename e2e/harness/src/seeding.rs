//! The whole product on the test cluster: real agents on the nodes, the
//! Dataset CRD installed, the operator running against the API stand-in,
//! and kubectl to drive it — what the operator's e2e tests and the demo
//! share.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use swarmseed_proto::pb;

use crate::error::{Error, Result};
use crate::process::ChildSpec;
use crate::{Cluster, ClusterSpec, Placement};

/// The Dataset CRD, as `crds/` holds it.
pub const DATASET_CRD: &str = include_str!("../../../crds/datasets.swarmseed.io.yaml");

/// The user the operators act as: the operator ServiceAccount of the Helm
/// chart's default release (`swarmseed` in `swarmseed-system`). Their
/// kubeconfig names it with `as:`, so the stand-in's audit tells their
/// requests from the tests' and kubectl's.
pub const OPERATOR_USER: &str = "system:serviceaccount:swarmseed-system:swarmseed-operator";

/// The swarmseed binaries a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub operator: PathBuf,
    pub e2e: PathBuf,
}

impl Binaries {
    /// `swarmseed-agent` and `swarmseed-operator` next to the `e2e` binary
    /// (one `cargo build --release --bins` builds all three).
    pub fn beside_e2e() -> Result<Self> {
        let e2e = crate::cluster::find_e2e_binary(None)?;
        let dir = e2e.parent().unwrap_or(Path::new("."));
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::Invalid(format!(
                    "{} is missing: build it first (cargo build --release --bins)",
                    p.display()
                )))
            }
        };
        Ok(Self {
            agent: find("swarmseed-agent")?,
            operator: find("swarmseed-operator")?,
            e2e,
        })
    }
}

/// The API resource of `Dataset` for dynamic access (the e2e crate does
/// not link the operator: it drives it as users do).
pub fn dataset_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("swarmseed.io", "v1alpha1", "Dataset"),
        "datasets",
    )
}

/// A cluster running the real agents and operator.
pub struct SeedCluster {
    pub cluster: Cluster,
    pub bins: Binaries,
    operators: Vec<u32>,
}

impl SeedCluster {
    /// Starts `spec` (its agent binary is replaced by the real agent),
    /// installs the CRD with kubectl and starts one operator.
    pub async fn start(mut spec: ClusterSpec, bins: Binaries) -> Result<Self> {
        spec.agent_binary = bins.agent.clone();
        spec.e2e_binary = Some(bins.e2e.clone());
        let cluster = Cluster::start(spec).await?;
        let mut this = Self {
            cluster,
            bins,
            operators: Vec::new(),
        };
        this.kubectl_stdin(&["apply", "-f", "-"], DATASET_CRD)
            .await?;
        this.start_operator("operator-0", &[])?;
        Ok(this)
    }

    /// Starts another operator process (leader election decides which one
    /// acts). Returns its pid.
    pub fn start_operator(&mut self, identity: &str, extra: &[&str]) -> Result<u32> {
        let log = self.cluster.work_dir().join(format!("{identity}.log"));
        let kubeconfig = self.operator_kubeconfig(identity)?;
        let mut spec = ChildSpec::new(identity, &self.bins.operator)
            .arg("run")
            .arg("--control-token-file")
            .arg(self.cluster.control_token_file())
            .arg("--identity")
            .arg(identity)
            .arg("--lease-namespace")
            .arg(crate::kube_objects::AGENT_NAMESPACE)
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,swarmseed_operator=debug")
            .log(log);
        for a in extra {
            spec = spec.arg(a);
        }
        let pid = self.cluster.spawn(Placement::Root, spec)?;
        self.operators.push(pid);
        Ok(pid)
    }

    /// Writes `<identity>.kubeconfig`: the stand-in, as [`OPERATOR_USER`].
    fn operator_kubeconfig(&self, identity: &str) -> Result<PathBuf> {
        // JSON is YAML.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "swarmseed-e2e", "cluster": { "server": self.cluster.api_url() } }],
            "users": [{ "name": "swarmseed-operator", "user": { "as": OPERATOR_USER } }],
            "contexts": [{
                "name": "swarmseed-operator",
                "context": { "cluster": "swarmseed-e2e", "user": "swarmseed-operator", "namespace": "default" },
            }],
            "current-context": "swarmseed-operator",
        });
        let path = self
            .cluster
            .work_dir()
            .join(format!("{identity}.kubeconfig"));
        std::fs::write(&path, config.to_string())
            .map_err(|e| Error::io("write the operator's kubeconfig", &path, e))?;
        Ok(path)
    }

    /// Kills an operator process (SIGKILL).
    pub fn kill_operator(&mut self, pid: u32) {
        self.operators.retain(|p| *p != pid);
        self.cluster.kill_helper(pid);
    }

    pub fn operator_pids(&self) -> &[u32] {
        &self.operators
    }

    /// Runs kubectl against the stand-in.
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_stdin(args, "").await
    }

    /// Runs kubectl with `stdin`; fails with its stderr unless it exits 0.
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<Output> {
        let out = kubectl(self.cluster.kubeconfig(), args, stdin).await?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out)
    }

    /// The Dataset `ns/name` as JSON (`None` once it is gone).
    pub async fn dataset(&self, ns: &str, name: &str) -> Result<Option<serde_json::Value>> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.cluster.client(), ns, &dataset_resource());
        let obj = api
            .get_opt(name)
            .await
            .map_err(|e| Error::Invalid(format!("get dataset {ns}/{name}: {e}")))?;
        Ok(obj.map(|o| serde_json::to_value(o).unwrap_or_default()))
    }

    /// The status of the Dataset `ns/name` (`Null` while it has none or
    /// once it is gone).
    pub async fn dataset_status(&self, ns: &str, name: &str) -> Result<serde_json::Value> {
        Ok(self
            .dataset(ns, name)
            .await?
            .and_then(|d| d.get("status").cloned())
            .unwrap_or_default())
    }

    /// Deletes the Dataset `ns/name` with kubectl and waits (up to 60 s)
    /// until it is gone, finalizer included.
    pub async fn delete_dataset(&self, ns: &str, name: &str) -> Result<()> {
        self.kubectl(&[
            "delete",
            "dataset",
            name,
            "-n",
            ns,
            "--wait=true",
            "--timeout=60s",
        ])
        .await
        .map(|_| ())
    }

    /// Creates the Secret `ns/name` holding `data`, (key, value) pairs.
    pub async fn create_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) -> Result<()> {
        let mut args: Vec<String> = ["create", "secret", "generic", name, "-n", ns]
            .map(str::to_owned)
            .to_vec();
        args.extend(data.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kubectl(&args).await.map(|_| ())
    }

    /// The names of the Nodes that carry the label `key`.
    pub async fn labelled_nodes(&self, key: &str) -> Result<BTreeSet<String>> {
        let nodes = Api::<Node>::all(self.cluster.client())
            .list(&ListParams::default().labels(key))
            .await
            .map_err(|e| Error::Invalid(format!("list nodes labelled {key}: {e}")))?;
        Ok(nodes
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }

    /// One line per Event (`events.k8s.io`) in `ns`: `fields`, a kubectl
    /// jsonpath template of the item (`{.regarding.name} {.reason}`).
    pub async fn events(&self, ns: &str, fields: &str) -> Result<Vec<String>> {
        let template = format!("jsonpath={{range .items[*]}}{fields}{{\"\\n\"}}{{end}}");
        let out = self
            .kubectl(&["get", "events.events.k8s.io", "-n", ns, "-o", &template])
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// The node's published directory of `ns/name`.
    pub fn published_dir(&self, node: &str, ns: &str, name: &str) -> Option<PathBuf> {
        let n = self.cluster.node(node)?;
        Some(n.root.join("datasets").join(ns).join(name))
    }

    /// Polls `probe` until it yields, failing after `timeout` with `what`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            match probe().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: what.to_string(),
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What each node's agent reports for `ns/name` (asked directly with
    /// the control token, as the operator does); `None` for an agent that
    /// holds nothing of it or does not answer.
    pub async fn agent_progress(
        &self,
        ns: &str,
        name: &str,
    ) -> Vec<(String, Option<pb::DatasetProgress>)> {
        let dataset = pb::DatasetRef {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            uid: String::new(),
        };
        let token = self.cluster.control_token().to_owned();
        let asks = self.cluster.nodes().iter().map(|n| {
            let (dataset, token) = (dataset.clone(), token.clone());
            let addr = n.control_addr();
            async move {
                let progress = agent_status(addr, &token, dataset.clone())
                    .await
                    .ok()
                    .and_then(|s| {
                        s.datasets
                            .into_iter()
                            .find(|d| d.dataset.as_ref() == Some(&dataset))
                    });
                (n.name.clone(), progress)
            }
        });
        futures::future::join_all(asks).await
    }

    /// The tail of an operator's log (for failure messages).
    pub fn operator_log(&self, identity: &str) -> String {
        let path = self.cluster.work_dir().join(format!("{identity}.log"));
        let s = std::fs::read_to_string(path).unwrap_or_default();
        let mut start = s.len().saturating_sub(6000);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s[start..].to_string()
    }
}

/// GetStatus of the agent at `addr` for `dataset`: at most 5 s to
/// connect and 5 s to answer.
async fn agent_status(
    addr: std::net::SocketAddr,
    token: &str,
    dataset: pb::DatasetRef,
) -> Result<pb::AgentStatus> {
    let bearer = crate::agent_api::Bearer::new(token)?;
    let mut client = crate::agent_api::connect(addr, &bearer, Duration::from_secs(5)).await?;
    client
        .get_status(pb::GetStatusRequest {
            dataset: Some(dataset),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| Error::network(format!("agent at {addr}"), e))
}

/// Runs `kubectl --kubeconfig <kubeconfig> args…` with `stdin`, bounded.
pub async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> Result<Output> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("run kubectl", "kubectl", e))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(|e| Error::io("write kubectl stdin", "kubectl", e))?;
    }
    tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .map_err(|_| Error::Invalid(format!("kubectl {} timed out", args.join(" "))))?
        .map_err(|e| Error::io("wait for kubectl", "kubectl", e))
}

/// The condition of `type_` in a Dataset's `status`.
pub fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether a Dataset's `status` says `Ready=True`.
pub fn is_ready(status: &serde_json::Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A Dataset manifest.
pub fn dataset_yaml(ns: &str, name: &str, spec: &serde_json::Value) -> String {
    let obj = serde_json::json!({
        "apiVersion": "swarmseed.io/v1alpha1",
        "kind": "Dataset",
        "metadata": { "namespace": ns, "name": name },
        "spec": spec,
    });
    // JSON is YAML.
    obj.to_string()
}
