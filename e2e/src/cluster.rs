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

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::apiserver::{ApiServer, AuditRecord};
use crate::disk::NodeDisk;
use crate::error::{Error, Result};
use crate::kube_objects::{self, AgentPorts};
use crate::naming::{self, AddressMode, AddressPlan, ClusterNames, SubnetSlot};
use crate::netns::{self, Network, Tbf};
use crate::origin::{OriginStats, S3Origin, S3OriginSpec, fetch_stats, reset_stats};
use crate::process::{ChildSpec, ManagedChild};

/// How the nodes are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NetworkMode {
    /// Namespaces when possible, loopback otherwise.
    #[default]
    Auto,
    /// Namespaces or fail.
    Namespaces,
    /// Loopback addresses, no namespaces, no shaping.
    Loopback,
}

/// One node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The Node name (a DNS label).
    pub name: String,
    /// Extra Node labels (`kubernetes.io/hostname` etc. are always set).
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
        }
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
    /// Rate of every node link, both directions (`None`: unshaped).
    pub link_mbit: Option<u32>,
    /// Rate of the origin link, both directions (`None`: unshaped).
    pub origin_link_mbit: Option<u32>,
    /// The agent program. It gets `agent_args` first, then
    /// `--node-name --root --control-listen --peer-listen --admin-listen
    /// --advertise-address --control-token-file`.
    pub agent_binary: PathBuf,
    pub agent_args: Vec<String>,
    /// Extra environment for the agents (the launcher's own is inherited).
    pub agent_env: Vec<(String, String)>,
    /// Where node roots, logs, the kubeconfig and the control token go
    /// (`None`: a fresh temporary directory).
    pub work_dir: Option<PathBuf>,
    /// Keep a temporary work directory after teardown (for debugging).
    pub keep_work_dir: bool,
    pub network: NetworkMode,
    pub ports: AgentPorts,
    /// How long to wait for each agent's `/readyz`.
    pub ready_timeout: Duration,
    /// The `e2e` binary (origins and proxies run as its subcommands inside
    /// namespaces); found next to the running executable when `None`.
    pub e2e_binary: Option<PathBuf>,
    /// Record every request to the API stand-in ([`Cluster::api_audit`]).
    pub audit_api: bool,
    /// Give every node a filesystem of its own of this many bytes, made
    /// fresh for this cluster ([`crate::disk`]; needs root). `None`: node
    /// roots are directories of the work directory's filesystem.
    pub node_disk_bytes: Option<u64>,
}

impl ClusterSpec {
    /// `count` nodes named `node-0`.., unshaped, running `agent_binary`.
    pub fn new(count: usize, agent_binary: impl Into<PathBuf>) -> Self {
        Self {
            nodes: (0..count)
                .map(|i| NodeSpec::new(format!("node-{i}")))
                .collect(),
            link_mbit: None,
            origin_link_mbit: None,
            agent_binary: agent_binary.into(),
            agent_args: Vec::new(),
            agent_env: Vec::new(),
            work_dir: None,
            keep_work_dir: false,
            network: NetworkMode::Auto,
            ports: AgentPorts::default(),
            ready_timeout: Duration::from_secs(30),
            e2e_binary: None,
            audit_api: false,
            node_disk_bytes: None,
        }
    }

    /// `count` nodes running `e2e stub-agent` instead of the real agent.
    pub fn with_stub_agents(count: usize, e2e_binary: impl Into<PathBuf>) -> Self {
        let bin = e2e_binary.into();
        let mut spec = Self::new(count, bin.clone());
        spec.agent_args = vec!["stub-agent".into()];
        spec.e2e_binary = Some(bin);
        spec
    }
}

/// Finds the `e2e` binary: the given path, `$SWARMSEED_E2E_BIN`, the
/// running executable if it is `e2e`, or `e2e` next to it or one directory
/// up (integration tests run from `target/<profile>/deps/`).
pub fn find_e2e_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SWARMSEED_E2E_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("find current executable", "/proc/self/exe", e))?;
    if exe.file_name().is_some_and(|n| n == "e2e") {
        return Ok(exe);
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join("e2e"), dir.join("..").join("e2e")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::Invalid(
        "cannot find the e2e binary: build it (cargo build -p e2e) or set SWARMSEED_E2E_BIN".into(),
    ))
}

/// One node of a running cluster.
#[derive(Debug)]
pub struct ClusterNode {
    pub name: String,
    pub index: usize,
    pub address: Ipv4Addr,
    /// The node's hostPath root (what the agent gets as `--root`).
    pub root: PathBuf,
    /// The node's network namespace (`None` on the loopback fallback).
    pub netns: Option<String>,
    pub ports: AgentPorts,
    pub labels: BTreeMap<String, String>,
    /// The agent's stdout and stderr.
    pub agent_log: PathBuf,
    agent: Option<ManagedChild>,
    restarts: u32,
    /// Its agent Pod was deleted ([`Cluster::remove_agent_pod`]).
    pod_removed: bool,
    /// The node's own filesystem, holding `root` ([`ClusterSpec::node_disk_bytes`]).
    disk: Option<NodeDisk>,
}

impl ClusterNode {
    pub fn control_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address.into(), self.ports.control)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address.into(), self.ports.peer)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address.into(), self.ports.admin)
    }

    /// `http://<address>:<admin>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// The agent's pid while it runs.
    pub fn agent_pid(&mut self) -> Option<u32> {
        let agent = self.agent.as_mut()?;
        agent.is_running().then(|| agent.pid())
    }
}

/// Where to run a helper process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement<'a> {
    /// In the named node's namespace.
    Node(&'a str),
    /// In the origin's namespace.
    Origin,
    /// In the launcher's own namespace.
    Root,
}

/// One end of the cluster network whose link can be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd<'a> {
    /// The named node's link: a partition of that node.
    Node(&'a str),
    /// The origin's link: an outage of every origin.
    Origin,
}

/// An HTTP origin running as `e2e origin-http` in the origin namespace.
#[derive(Debug)]
pub struct RemoteHttpOrigin {
    url: String,
    child: ManagedChild,
}

impl RemoteHttpOrigin {
    /// `http://<origin address>:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub async fn stats(&self) -> Result<OriginStats> {
        fetch_stats(&self.url).await
    }

    pub async fn reset_stats(&self) -> Result<()> {
        reset_stats(&self.url).await
    }
}

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

fn validate(spec: &ClusterSpec) -> Result<()> {
    if spec.nodes.is_empty() {
        return Err(Error::Invalid("a cluster needs at least one node".into()));
    }
    if spec.nodes.len() > naming::MAX_NODES {
        return Err(Error::Invalid(format!(
            "at most {} nodes per cluster",
            naming::MAX_NODES
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in &spec.nodes {
        let ok = !n.name.is_empty()
            && n.name.len() <= 63
            && n.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.name.starts_with('-')
            && !n.name.ends_with('-');
        if !ok {
            return Err(Error::Invalid(format!(
                "node name {:?} is not a DNS label",
                n.name
            )));
        }
        if !seen.insert(&n.name) {
            return Err(Error::Invalid(format!(
                "node name {:?} appears twice",
                n.name
            )));
        }
    }
    Ok(())
}

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

    async fn register_objects(&mut self) -> Result<()> {
        let client = self.client.clone();
        self.owner_uid = with_timeout(
            "registering the agent DaemonSet",
            KUBE_TIMEOUT,
            kube_objects::register_agent_daemonset(&client),
        )
        .await?;
        for n in &self.nodes {
            with_timeout(
                "registering a Node",
                KUBE_TIMEOUT,
                kube_objects::register_node(&client, &n.name, &n.labels, n.address),
            )
            .await?;
            with_timeout(
                "registering an agent Pod",
                KUBE_TIMEOUT,
                kube_objects::register_agent_pod(
                    &client,
                    &n.name,
                    n.address,
                    n.ports,
                    self.owner_uid.as_deref(),
                ),
            )
            .await?;
        }
        Ok(())
    }

    fn agent_spec(&self, i: usize) -> ChildSpec {
        let n = &self.nodes[i];
        let mut spec = ChildSpec::new(format!("agent {}", n.name), self.spec.agent_binary.clone())
            .netns(n.netns.clone())
            .args(self.spec.agent_args.iter())
            .arg("--node-name")
            .arg(&n.name)
            .arg("--root")
            .arg(&n.root)
            .arg("--control-listen")
            .arg(n.control_addr().to_string())
            .arg("--peer-listen")
            .arg(n.peer_addr().to_string())
            .arg("--admin-listen")
            .arg(n.admin_addr().to_string())
            .arg("--advertise-address")
            .arg(n.address.to_string())
            .arg("--control-token-file")
            .arg(&self.token_file)
            .log(&n.agent_log)
            // As the chart runs it: permissions apply to the agent.
            .without_capabilities();
        for (k, v) in &self.spec.agent_env {
            spec = spec.env(k, v);
        }
        spec
    }

    fn spawn_agent(&mut self, i: usize) -> Result<()> {
        let spec = self.agent_spec(i);
        let child = ManagedChild::spawn(&spec)?;
        self.nodes[i].agent = Some(child);
        Ok(())
    }

    async fn wait_agent_ready(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let url = format!("{}/readyz", n.admin_url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| Error::network("build http client", e))?;
        let start = Instant::now();
        let mut last = "no answer yet".to_string();
        while start.elapsed() < self.spec.ready_timeout {
            match client.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            // An exited (unreaped, so zombie) agent will never get ready.
            if n.agent
                .as_ref()
                .is_some_and(|a| !naming::pid_alive(a.pid()))
            {
                last = "the agent exited".into();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tail = n
            .agent
            .as_ref()
            .map(|a| a.log_tail(2000))
            .unwrap_or_default();
        Err(Error::NotReady {
            what: format!("agent on {} ({url})", n.name),
            waited: start.elapsed(),
            last: format!("{last}; agent log tail:\n{tail}"),
        })
    }

    async fn set_pod_ready(&self, i: usize, ready: bool) -> Result<()> {
        let n = &self.nodes[i];
        with_timeout(
            "updating an agent Pod",
            KUBE_TIMEOUT,
            kube_objects::set_agent_pod_ready(&self.client, &n.name, n.address, ready, n.restarts),
        )
        .await
    }

    fn index_of(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| Error::Invalid(format!("no node named {node:?}")))
    }

    /// Kills the agent on `node` with SIGKILL (a crash) and marks its Pod
    /// not ready, as the kubelet would after the probe fails.
    pub async fn kill_agent(&mut self, node: &str) -> Result<()> {
        let i = self.index_of(node)?;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
        }
        self.set_pod_ready(i, false).await
    }

    /// Kills the agent on `node` and deletes its Pod, as draining or
    /// replacing the node would; [`Cluster::restart_agent`] brings both back.
    pub async fn remove_agent_pod(&mut self, node: &str) -> Result<()> {
        let i = self.index_of(node)?;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
        }
        let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
            self.client.clone(),
            kube_objects::AGENT_NAMESPACE,
        );
        let name = kube_objects::agent_pod_name(node);
        with_timeout("deleting an agent Pod", KUBE_TIMEOUT, async {
            match pods.delete(&name, &Default::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        self.nodes[i].pod_removed = true;
        Ok(())
    }

    /// Restarts the agent on `node` (killing it first if it runs), waits for
    /// `/readyz` and marks its Pod ready again with one more restart (made
    /// anew if [`Cluster::remove_agent_pod`] deleted it).
    pub async fn restart_agent(&mut self, node: &str) -> Result<()> {
        let i = self.index_of(node)?;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.kill();
            self.set_pod_ready(i, false).await?;
        }
        if self.nodes[i].pod_removed {
            let n = &self.nodes[i];
            with_timeout(
                "registering an agent Pod",
                KUBE_TIMEOUT,
                kube_objects::register_agent_pod(
                    &self.client,
                    &n.name,
                    n.address,
                    n.ports,
                    self.owner_uid.as_deref(),
                ),
            )
            .await?;
            self.nodes[i].pod_removed = false;
        }
        self.nodes[i].restarts += 1;
        self.spawn_agent(i)?;
        self.wait_agent_ready(i).await?;
        self.set_pod_ready(i, true).await
    }

    /// Cuts (`up = false`) or restores a link ([`LinkEnd`]). Needs network
    /// namespaces: on the loopback fallback there is no link to cut.
    pub fn set_link_up(&self, end: LinkEnd<'_>, up: bool) -> Result<()> {
        let net = self.network.as_ref().ok_or_else(|| {
            Error::Invalid("cutting a link needs network namespaces (run as root)".into())
        })?;
        let ep = match end {
            LinkEnd::Origin => &net.origin,
            LinkEnd::Node(name) => &net.nodes[self.index_of(name)?],
        };
        net.set_link_up(ep, up)
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

    fn netns_for(&self, placement: Placement<'_>) -> Result<Option<String>> {
        Ok(match placement {
            Placement::Root => None,
            Placement::Origin => self.origin_netns().map(str::to_string),
            Placement::Node(name) => self.nodes[self.index_of(name)?].netns.clone(),
        })
    }

    /// Starts a helper process at `placement`; it is killed on teardown.
    /// Returns its pid.
    pub fn spawn(&mut self, placement: Placement<'_>, spec: ChildSpec) -> Result<u32> {
        let spec = spec.netns(self.netns_for(placement)?);
        let child = ManagedChild::spawn(&spec)?;
        let pid = child.pid();
        self.extra.push(child);
        Ok(pid)
    }

    /// Kills a helper started with [`Cluster::spawn`].
    pub fn kill_helper(&mut self, pid: u32) {
        self.extra.retain(|c| c.pid() != pid);
    }

    /// A command that runs `program` at `placement` (for short, awaited
    /// commands; wrap the wait in a timeout). Killed if dropped.
    pub fn command(
        &self,
        placement: Placement<'_>,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<tokio::process::Command> {
        let mut cmd = match self.netns_for(placement)? {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", &ns]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        Ok(cmd)
    }

    /// Runs `e2e origin-http` serving `root` on the origin address and
    /// `port`, in the origin namespace; waits until it answers.
    pub async fn start_http_origin(&mut self, root: &Path, port: u16) -> Result<RemoteHttpOrigin> {
        let bin = self.e2e_binary()?;
        let listen = SocketAddr::new(self.origin_address().into(), port);
        let spec = ChildSpec::new("origin-http", bin)
            .netns(self.origin_netns().map(str::to_string))
            .arg("origin-http")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(listen.to_string())
            .log(self.work_dir().join(format!("origin-http-{port}.log")));
        let mut child = ManagedChild::spawn(&spec)?;
        let url = format!("http://{listen}");
        let start = Instant::now();
        loop {
            match fetch_stats(&url).await {
                Ok(_) => return Ok(RemoteHttpOrigin { url, child }),
                Err(e) if start.elapsed() > Duration::from_secs(15) || !child.is_running() => {
                    return Err(Error::NotReady {
                        what: format!("http origin at {url}"),
                        waited: start.elapsed(),
                        last: format!("{e}; log: {}", child.log_tail(2000)),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Starts moto's S3 server and the counting proxy on the origin address
    /// (port 9000, stats on 9001 inside a namespace) and creates `bucket`.
    pub async fn start_s3_origin(&self, bucket: &str) -> Result<S3Origin> {
        let in_ns = self.origin_netns().map(str::to_string);
        S3Origin::start(S3OriginSpec {
            listen_ip: IpAddr::V4(self.origin_address()),
            port: 9000,
            e2e_binary: if in_ns.is_some() {
                Some(self.e2e_binary()?)
            } else {
                None
            },
            netns: in_ns,
            log_dir: self.work_dir().join("s3-origin"),
            bucket: bucket.to_string(),
            startup_timeout: Duration::from_secs(30),
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_node_lists() {
        let mut spec = ClusterSpec::new(2, "/bin/true");
        assert!(validate(&spec).is_ok());
        spec.nodes[1].name = "node-0".into();
        assert!(
            validate(&spec)
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        spec.nodes[1].name = "Node_1".into();
        assert!(
            validate(&spec)
                .unwrap_err()
                .to_string()
                .contains("not a DNS label")
        );
        spec.nodes.clear();
        assert_eq!(validate(&spec).unwrap_err().label(), "invalid");
    }

    #[test]
    fn stub_agent_spec_runs_the_e2e_subcommand() {
        let spec = ClusterSpec::with_stub_agents(3, "/x/e2e");
        assert_eq!(
            spec.nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["node-0", "node-1", "node-2"]
        );
        assert_eq!(spec.agent_args, ["stub-agent"]);
        assert_eq!(spec.agent_binary, PathBuf::from("/x/e2e"));
    }
}
