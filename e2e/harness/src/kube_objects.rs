//! The Kubernetes objects a real cluster would have for our nodes: a Node
//! per node and, per node, the agent Pod as the agent DaemonSet would
//! create it. The builders are pure; the `register_*` functions apply them
//! through any `kube::Client` (the API stand-in in tests).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use swarmseed_core::label::AGENT_POD_LABELS;

use crate::error::{Error, Result};

/// Namespace of the agent DaemonSet and its Pods.
pub const AGENT_NAMESPACE: &str = "swarmseed-system";
/// Name of the agent DaemonSet.
pub const AGENT_DAEMONSET: &str = "swarmseed-agent";
/// Image name recorded in the agent Pod spec (nothing pulls it here).
pub const AGENT_IMAGE: &str = "swarmseed/agent:dev";

/// Ports the agent listens on (the same on every node: each node has its
/// own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentPorts {
    /// gRPC control API (operator → agent).
    pub control: u16,
    /// Peer data plane (agent ↔ agent).
    pub peer: u16,
    /// /livez, /readyz, /metrics.
    pub admin: u16,
}

impl Default for AgentPorts {
    fn default() -> Self {
        Self {
            control: 7400,
            peer: 7401,
            admin: 7402,
        }
    }
}

/// `swarmseed-agent-<node>`.
pub fn agent_pod_name(node: &str) -> String {
    format!("{AGENT_DAEMONSET}-{node}")
}

fn labels_json(labels: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::to_value(labels).unwrap_or_else(|_| json!({}))
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Kube(format!("building object: {e}")))
}

/// The Node's labels: the well-known ones plus the spec's.
pub fn node_labels(name: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        ),
    ]);
    labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// A Node object (metadata and spec; status is set by [`node_status`]).
pub fn node_object(name: &str, labels: &BTreeMap<String, String>) -> Result<Node> {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels_json(&node_labels(name, labels)) },
        "spec": {},
    }))
}

/// A Node's status: its InternalIP and hostname, and Ready=True.
pub fn node_status(name: &str, address: Ipv4Addr, now: &str) -> serde_json::Value {
    json!({
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": address.to_string() },
                { "type": "Hostname", "address": name },
            ],
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "architecture": std::env::consts::ARCH,
                "operatingSystem": "linux",
                "kubeletVersion": "v1.32.0",
                "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                "kubeProxyVersion": "", "machineID": "", "osImage": "", "systemUUID": "",
            },
        }
    })
}

/// The agent DaemonSet (created so the Pods can point to their owner).
pub fn agent_daemonset() -> Result<DaemonSet> {
    let labels: BTreeMap<&str, &str> = AGENT_POD_LABELS.into_iter().collect();
    from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": AGENT_DAEMONSET, "namespace": AGENT_NAMESPACE, "labels": labels },
        "spec": {
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "hostNetwork": true, "containers": [{ "name": "agent", "image": AGENT_IMAGE }] },
            },
        },
    }))
}

/// The agent Pod on `node` as the DaemonSet would create it (host network,
/// so its IP is the node's; pinned to the node by `spec.nodeName`).
pub fn agent_pod(node: &str, ports: AgentPorts, owner_uid: Option<&str>) -> Result<Pod> {
    let labels: BTreeMap<&str, &str> = AGENT_POD_LABELS.into_iter().collect();
    let owner = owner_uid.map(|uid| {
        json!([{
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": AGENT_DAEMONSET,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    });
    let mut metadata = json!({
        "name": agent_pod_name(node),
        "namespace": AGENT_NAMESPACE,
        "labels": labels,
    });
    if let Some(owner) = owner {
        metadata["ownerReferences"] = owner;
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "containers": [{
                "name": "agent",
                "image": AGENT_IMAGE,
                "ports": [
                    { "name": "control", "containerPort": ports.control, "protocol": "TCP" },
                    { "name": "peer", "containerPort": ports.peer, "protocol": "TCP" },
                    { "name": "admin", "containerPort": ports.admin, "protocol": "TCP" },
                ],
                "readinessProbe": { "httpGet": { "path": "/readyz", "port": ports.admin } },
                "livenessProbe": { "httpGet": { "path": "/livez", "port": ports.admin } },
            }],
        },
    }))
}

/// The agent Pod's status: Running, podIP = hostIP = the node's address,
/// Ready as given.
pub fn agent_pod_status(
    address: Ipv4Addr,
    ready: bool,
    restarts: u32,
    now: &str,
) -> serde_json::Value {
    let ready_s = if ready { "True" } else { "False" };
    json!({
        "status": {
            "phase": "Running",
            "hostIP": address.to_string(),
            "hostIPs": [{ "ip": address.to_string() }],
            "podIP": address.to_string(),
            "podIPs": [{ "ip": address.to_string() }],
            "startTime": now,
            "conditions": [
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": now },
                { "type": "Initialized", "status": "True", "lastTransitionTime": now },
                { "type": "ContainersReady", "status": ready_s, "lastTransitionTime": now },
                { "type": "Ready", "status": ready_s, "lastTransitionTime": now },
            ],
            "containerStatuses": [{
                "name": "agent",
                "image": AGENT_IMAGE,
                "imageID": "",
                "ready": ready,
                "started": true,
                "restartCount": restarts,
                "state": { "running": { "startedAt": now } },
            }],
        }
    })
}

/// Current time in the Kubernetes timestamp format (`metav1.Time`: UTC,
/// seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates the agent namespace and DaemonSet if missing; returns the
/// DaemonSet's uid when the API server stores DaemonSets.
pub async fn register_agent_daemonset(client: &kube::Client) -> Result<Option<String>> {
    let ns: Namespace = from_json(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": AGENT_NAMESPACE },
    }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    let api = Api::<DaemonSet>::namespaced(client.clone(), AGENT_NAMESPACE);
    let created = match api
        .create(&PostParams::default(), &agent_daemonset()?)
        .await
    {
        Ok(ds) => ds,
        Err(e) if is_conflict(&e) => api.get(AGENT_DAEMONSET).await?,
        Err(e) => {
            // The Pods are what the operator reads; an owner is a nicety.
            tracing::warn!(error = %e, "could not create the agent DaemonSet; agent Pods get no owner");
            return Ok(None);
        }
    };
    Ok(created.metadata.uid)
}

/// Creates (or updates) the Node and sets its status.
pub async fn register_node(
    client: &kube::Client,
    name: &str,
    labels: &BTreeMap<String, String>,
    address: Ipv4Addr,
) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let node = node_object(name, labels)?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": node.metadata.labels } })),
            )
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(node_status(name, address, &now_rfc3339())),
    )
    .await?;
    Ok(())
}

/// Creates the agent Pod if missing and sets its status.
pub async fn register_agent_pod(
    client: &kube::Client,
    node: &str,
    address: Ipv4Addr,
    ports: AgentPorts,
    owner_uid: Option<&str>,
) -> Result<()> {
    let api = Api::<Pod>::namespaced(client.clone(), AGENT_NAMESPACE);
    match api
        .create(&PostParams::default(), &agent_pod(node, ports, owner_uid)?)
        .await
    {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    set_agent_pod_ready(client, node, address, false, 0).await
}

/// Sets the agent Pod's readiness (what the kubelet's probe would report).
pub async fn set_agent_pod_ready(
    client: &kube::Client,
    node: &str,
    address: Ipv4Addr,
    ready: bool,
    restarts: u32,
) -> Result<()> {
    let api = Api::<Pod>::namespaced(client.clone(), AGENT_NAMESPACE);
    api.patch_status(
        &agent_pod_name(node),
        &PatchParams::default(),
        &Patch::Merge(agent_pod_status(address, ready, restarts, &now_rfc3339())),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_pod_looks_like_the_daemonsets() {
        let pod = agent_pod("node-1", AgentPorts::default(), Some("uid-1")).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("swarmseed-agent-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some(AGENT_NAMESPACE));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "swarmseed");
        assert_eq!(labels["app.kubernetes.io/component"], "agent");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        let ports: Vec<_> = spec.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("control".into(), 7400),
                ("peer".into(), 7401),
                ("admin".into(), 7402)
            ]
        );
        assert_eq!(pod.metadata.owner_references.unwrap()[0].kind, "DaemonSet");
    }

    #[test]
    fn statuses_deserialize_as_the_real_types() {
        let now = now_rfc3339();
        let v = agent_pod_status(Ipv4Addr::new(10, 213, 1, 10), true, 0, &now);
        let status: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(v["status"].clone()).unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.213.1.10"));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let v = node_status("n", Ipv4Addr::new(10, 213, 1, 10), &now);
        let status: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(v["status"].clone()).unwrap();
        assert_eq!(status.addresses.unwrap()[0].type_, "InternalIP");
    }

    #[test]
    fn node_labels_include_hostname_and_spec_labels() {
        let extra = BTreeMap::from([("gpu".to_string(), "true".to_string())]);
        let node = node_object("n1", &extra).unwrap();
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["gpu"], "true");
    }
}
