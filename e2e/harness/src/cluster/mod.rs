//! The test cluster: N nodes, each with its own address, hostPath root and
//! agent process, an origin address, and the Kubernetes API stand-in
//! holding the Node and agent Pod objects a real cluster would have.
//!
//! With root, every node is a network namespace on a bridge with `tc`
//! shaped links (see [`crate::netns`]); without root (or when namespaces
//! cannot be created) the nodes get distinct 127.213.S.x loopback addresses
//! and no shaping, and the reason is printed.
//!
//! Everything is torn down on drop (also while unwinding from a panic):
//! processes first (whole process groups), then links and namespaces, then
//! the work directory unless it was asked to be kept.

mod agents;
mod helpers;
mod node;
mod spec;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;

use crate::apiserver::{ApiServer, AuditRecord};
use crate::disk::NodeDisk;
use crate::error::{Error, Result};
use crate::naming::{self, AddressMode, AddressPlan, ClusterNames, SubnetSlot};
use crate::netns::{self, Network, Tbf};
use crate::process::ManagedChild;

pub use node::{ClusterNode, LinkEnd, Placement, RemoteHttpOrigin};
use spec::validate;
pub use spec::{ClusterSpec, NetworkMode, NodeSpec, find_e2e_binary};

enum WorkDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(t) => t.path(),
            WorkDir::Given(p) => p,
        }
    }
}

/// A running cluster. Dropping it tears everything down.
pub struct Cluster {
    names: ClusterNames,
    plan: AddressPlan,
    fallback_reason: Option<String>,
    nodes: Vec<ClusterNode>,
    extra: Vec<ManagedChild>,
    /// Filesystems made by [`Cluster::add_disk`].
    disks: Vec<NodeDisk>,
    api: Option<ApiServer>,
    client: kube::Client,
    network: Option<Network>,
    kubeconfig: PathBuf,
    token_file: PathBuf,
    token: String,
    spec: ClusterSpec,
    e2e_binary: Option<PathBuf>,
    owner_uid: Option<String>,
    work: Option<WorkDir>,
    _slot: SubnetSlot,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("names", &self.names)
            .field("plan", &self.plan)
            .field("nodes", &self.nodes)
            .field("work_dir", &self.work_dir())
            .finish_non_exhaustive()
    }
}

async fn with_timeout<T>(what: &str, d: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| Error::Kube(format!("{what} timed out after {d:?}")))?
}

const KUBE_TIMEOUT: Duration = Duration::from_secs(30);

fn new_token(names: &ClusterNames) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&names.pid.to_le_bytes());
    h.update(&names.counter.to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    h.finalize().to_hex()[..32].to_string()
}

impl Cluster {
    /// Starts the cluster and waits until every agent is ready.
    pub async fn start(spec: ClusterSpec) -> Result<Self> {
        validate(&spec)?;
        crate::init_crypto();
        let pid = std::process::id();
        let names = ClusterNames::new(pid, naming::next_cluster_counter());

        // Which network?
        let mut fallback_reason = match spec.network {
            NetworkMode::Loopback => Some("loopback requested".to_string()),
            NetworkMode::Namespaces | NetworkMode::Auto => netns::unavailable_reason(),
        };
        if spec.network == NetworkMode::Namespaces
            && let Some(r) = &fallback_reason
        {
            return Err(Error::Invalid(format!(
                "network namespaces unavailable: {r}"
            )));
        }
        if fallback_reason.is_none() {
            netns::sweep_stale();
        }
        naming::sweep_stale_files(
            &std::env::temp_dir(),
            &naming::default_slot_dir(),
            naming::pid_alive,
        );
        let mode = if fallback_reason.is_some() {
            AddressMode::Loopback
        } else {
            AddressMode::Namespaces
        };
        let slot = SubnetSlot::claim(
            &naming::default_slot_dir(),
            naming::preferred_subnet(pid, names.counter),
            pid,
            naming::pid_alive,
        )?;
        let mut plan = AddressPlan {
            mode,
            subnet: slot.subnet,
        };
        let network = if mode == AddressMode::Namespaces {
            let node_tbf = spec.link_mbit.map(Tbf::for_rate);
            let origin_tbf = spec.origin_link_mbit.map(Tbf::for_rate);
            match Network::create(&names, &plan, spec.nodes.len(), node_tbf, origin_tbf) {
                Ok(n) => Some(n),
                Err(e) if spec.network == NetworkMode::Auto => {
                    fallback_reason = Some(format!("creating the namespace network failed: {e}"));
                    plan.mode = AddressMode::Loopback;
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if let Some(reason) = &fallback_reason {
            let msg = format!(
                "swarmseed e2e: nodes run on loopback addresses 127.213.{}.x without link shaping ({reason})",
                plan.subnet
            );
            eprintln!("{msg}");
            tracing::warn!("{msg}");
        }

        let work = match &spec.work_dir {
            Some(p) => {
                std::fs::create_dir_all(p).map_err(|e| Error::io("create work dir", p, e))?;
                WorkDir::Given(p.clone())
            }
            None => WorkDir::Temp(
                tempfile::Builder::new()
                    .prefix(&format!(
                        "{}{pid}-{}-",
                        naming::WORK_DIR_PREFIX,
                        names.counter
                    ))
                    .tempdir()
                    .map_err(|e| Error::io("create work dir", std::env::temp_dir(), e))?,
            ),
        };
        let wd = work.path().to_path_buf();
        if spec.keep_work_dir {
            let marker = wd.join(naming::KEEP_MARKER);
            std::fs::write(&marker, b"").map_err(|e| Error::io("write keep marker", &marker, e))?;
        }
        let token = new_token(&names);
        let token_file = wd.join("control-token");
        std::fs::write(&token_file, &token)
            .map_err(|e| Error::io("write control token", &token_file, e))?;
        let kubeconfig = wd.join("kubeconfig");
        let api = ApiServer::start(
            SocketAddr::new(plan.gateway().into(), 0),
            &kubeconfig,
            spec.audit_api,
        )
        .await?;
        let client = api.client();

        let e2e_binary = find_e2e_binary(spec.e2e_binary.as_deref()).ok();
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for (index, n) in spec.nodes.iter().enumerate() {
            let address = plan
                .node(index)
                .ok_or_else(|| Error::Invalid("too many nodes".into()))?;
            let dir = wd.join("nodes").join(&n.name);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create node dir", &dir, e))?;
            let disk = match spec.node_disk_bytes {
                Some(bytes) => Some(NodeDisk::create(
                    &dir.join("disk.img"),
                    &dir.join("disk"),
                    bytes,
                )?),
                None => None,
            };
            let root = disk
                .as_ref()
                .map_or(dir.as_path(), NodeDisk::path)
                .join("root");
            std::fs::create_dir_all(&root).map_err(|e| Error::io("create node root", &root, e))?;
            nodes.push(ClusterNode {
                name: n.name.clone(),
                index,
                address,
                root,
                netns: network.as_ref().map(|net| net.nodes[index].netns.clone()),
                ports: spec.ports,
                labels: n.labels.clone(),
                agent_log: dir.join("agent.log"),
                agent: None,
                restarts: 0,
                pod_removed: false,
                disk,
            });
        }

        let mut cluster = Cluster {
            names,
            plan,
            fallback_reason,
            nodes,
            extra: Vec::new(),
            disks: Vec::new(),
            api: Some(api),
            client,
            network,
            kubeconfig,
            token_file,
            token,
            spec,
            e2e_binary,
            owner_uid: None,
            work: Some(work),
            _slot: slot,
        };
        // From here on, an error drops `cluster`, which tears down.
        cluster.register_objects().await?;
        for i in 0..cluster.nodes.len() {
            cluster.spawn_agent(i)?;
        }
        let waits: Vec<_> = (0..cluster.nodes.len())
            .map(|i| cluster.wait_agent_ready(i))
            .collect();
        for r in join_all(waits).await {
            r?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.set_pod_ready(i, true).await?;
        }
        Ok(cluster)
    }

    /// Stops gracefully: SIGTERM to every agent (SIGKILL after 5 s), the
    /// API stand-in shut down, then the usual teardown.
    pub async fn stop(mut self) {
        for n in &mut self.nodes {
            if let Some(mut agent) = n.agent.take() {
                agent.stop(Duration::from_secs(5));
            }
        }
        if let Some(api) = self.api.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), api.shutdown()).await;
        }
        drop(self);
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [ClusterNode] {
        &mut self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A client for the API stand-in.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Every resource request the API stand-in served, with the attributes
    /// RBAC decides on; empty unless [`ClusterSpec::audit_api`] is set.
    pub fn api_audit(&self) -> Vec<AuditRecord> {
        self.api.as_ref().map(ApiServer::audit).unwrap_or_default()
    }

    /// The API stand-in's URL.
    pub fn api_url(&self) -> String {
        self.api.as_ref().map(ApiServer::url).unwrap_or_default()
    }

    /// A kubeconfig for the stand-in (`KUBECONFIG=... kubectl get nodes`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The token the operator presents to agents' control API.
    pub fn control_token(&self) -> &str {
        &self.token
    }

    pub fn control_token_file(&self) -> &Path {
        &self.token_file
    }

    /// A fresh filesystem of `bytes` of its own ([`crate::disk`]; needs
    /// root), mounted at `<work dir>/disks/<name>` until teardown; returns
    /// the mount point.
    pub fn add_disk(&mut self, name: &str, bytes: u64) -> Result<PathBuf> {
        let dir = self.work_dir().join("disks");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let disk = NodeDisk::create(&dir.join(format!("{name}.img")), &dir.join(name), bytes)?;
        let path = disk.path().to_path_buf();
        self.disks.push(disk);
        Ok(path)
    }

    pub fn work_dir(&self) -> &Path {
        self.work
            .as_ref()
            .map(WorkDir::path)
            .unwrap_or(Path::new(""))
    }

    /// Namespaces or loopback.
    pub fn mode(&self) -> AddressMode {
        self.plan.mode
    }

    /// Why the loopback fallback is used, if it is.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Where origins listen.
    pub fn origin_address(&self) -> Ipv4Addr {
        self.plan.origin()
    }

    /// The root namespace's address on the cluster network (the stand-in
    /// listens here; from nodes this is the way to the launcher).
    pub fn gateway_address(&self) -> Ipv4Addr {
        self.plan.gateway()
    }

    pub fn origin_netns(&self) -> Option<&str> {
        self.network.as_ref().map(|n| n.origin.netns.as_str())
    }

    /// Every namespace this cluster created (empty on loopback).
    pub fn netns_names(&self) -> Vec<String> {
        self.network
            .as_ref()
            .map(Network::netns_names)
            .unwrap_or_default()
    }

    /// Every root-namespace interface this cluster created.
    pub fn link_names(&self) -> Vec<String> {
        self.network
            .as_ref()
            .map(Network::link_names)
            .unwrap_or_default()
    }

    /// The pids of every process this cluster started and still tracks.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.agent.as_ref().map(ManagedChild::pid))
            .chain(self.extra.iter().map(ManagedChild::pid))
            .collect()
    }

    /// The `e2e` binary used for helper processes.
    pub fn e2e_binary(&self) -> Result<PathBuf> {
        self.e2e_binary.clone().ok_or_else(|| {
            Error::Invalid("the e2e binary was not found; set ClusterSpec::e2e_binary".into())
        })
    }

    fn teardown(&mut self) {
        for n in &mut self.nodes {
            n.agent.take();
        }
        self.extra.clear();
        // After every process that could hold a file open on them.
        for n in &mut self.nodes {
            n.disk.take();
        }
        self.disks.clear();
        if let Some(mut net) = self.network.take() {
            net.teardown();
        }
        // The stand-in's own drop stops it; `stop()` shuts it down cleanly.
        self.api.take();
        match self.work.take() {
            Some(WorkDir::Temp(t)) if self.spec.keep_work_dir => {
                let kept = t.keep();
                eprintln!("swarmseed e2e: kept work dir {}", kept.display());
            }
            other => drop(other),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
