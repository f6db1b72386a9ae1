//! What cluster to start: nodes, links, agent program, work directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kube_objects::AgentPorts;
use crate::naming;

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

pub(super) fn validate(spec: &ClusterSpec) -> Result<()> {
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
