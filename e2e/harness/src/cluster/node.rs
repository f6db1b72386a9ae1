//! A running cluster's parts as its users see them: nodes, where helpers
//! run, which links can be cut, remote origins.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::disk::NodeDisk;
use crate::error::Result;
use crate::kube_objects::AgentPorts;
use crate::origin::{OriginStats, fetch_stats, reset_stats};
use crate::process::ManagedChild;

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
    pub(super) agent: Option<ManagedChild>,
    pub(super) restarts: u32,
    /// Its agent Pod was deleted ([`Cluster::remove_agent_pod`]).
    pub(super) pod_removed: bool,
    /// The node's own filesystem, holding `root` ([`ClusterSpec::node_disk_bytes`]).
    pub(super) disk: Option<NodeDisk>,
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
    pub(super) url: String,
    pub(super) child: ManagedChild,
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
