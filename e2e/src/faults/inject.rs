//! Injection: the faults of the matrix as one call each. Every injection
//! and every end of one is recorded in the [`super::world::World`], which
//! the checks read (a cut-off node's leftovers and a stopped control
//! plane's silence are not held against the product) and the report lists.

use std::time::Instant;

use super::setup::FaultCluster;
use super::world::LEASE_TAKEOVER;
use swarmseed_harness::LinkEnd;
use swarmseed_harness::error::{Error, Result};

impl FaultCluster {
    /// SIGKILL of the agent on `node`; its Pod turns not Ready.
    pub async fn kill_agent(&mut self, node: &str) -> Result<()> {
        self.world.set_node(node, false);
        self.world.injected(format!("agent-kill {node}"));
        self.seed.cluster.kill_agent(node).await
    }

    /// Starts the agent on `node` again and waits until it is Ready.
    pub async fn restart_agent(&mut self, node: &str) -> Result<()> {
        self.seed.cluster.restart_agent(node).await?;
        self.world.healed(format!("agent-restart {node}"));
        self.world.set_node(node, true);
        Ok(())
    }

    /// SIGKILL of the agent on `node` and deletion of its Pod (the node is
    /// drained or replaced); [`FaultCluster::restart_agent`] brings both
    /// back.
    pub async fn drain_node(&mut self, node: &str) -> Result<()> {
        self.world.set_node(node, false);
        self.world.injected(format!("agent-pod-delete {node}"));
        self.seed.cluster.remove_agent_pod(node).await
    }

    /// Cuts `node`'s link: nothing reaches it, it reaches nothing; its
    /// agent runs on and its Pod stays Ready, as in a real partition.
    pub fn partition(&mut self, node: &str) -> Result<()> {
        self.world.set_node(node, false);
        self.world.injected(format!("partition {node}"));
        self.seed.cluster.set_link_up(LinkEnd::Node(node), false)
    }

    pub fn heal_partition(&mut self, node: &str) -> Result<()> {
        self.seed.cluster.set_link_up(LinkEnd::Node(node), true)?;
        self.world.healed(format!("partition-end {node}"));
        self.world.set_node(node, true);
        Ok(())
    }

    /// Cuts the origin's link: every read and listing fails (new
    /// connections time out, open ones hang until their timeouts).
    pub fn origin_outage(&mut self) -> Result<()> {
        self.world.injected("origin-outage");
        self.seed.cluster.set_link_up(LinkEnd::Origin, false)
    }

    pub fn origin_restore(&mut self) -> Result<()> {
        self.seed.cluster.set_link_up(LinkEnd::Origin, true)?;
        self.world.healed("origin-outage-end");
        Ok(())
    }

    /// SIGKILL of every running operator.
    pub fn kill_operator(&mut self) -> Result<()> {
        let pids = self.seed.operator_pids().to_vec();
        if pids.is_empty() {
            return Err(Error::Invalid("no operator runs".into()));
        }
        for pid in pids {
            self.seed.kill_operator(pid);
        }
        self.world.lock().control_since = None;
        self.world.injected("operator-kill");
        Ok(())
    }

    /// Starts a new operator. After a kill it acts once the dead one's
    /// Lease expired, which the checks' timers allow for.
    pub fn start_operator(&mut self) -> Result<()> {
        let identity = format!("operator-{}", self.operators_started);
        self.seed.start_operator(&identity, &[])?;
        self.operators_started += 1;
        self.world.lock().control_since = Some(Instant::now() + LEASE_TAKEOVER);
        self.world.healed(format!("operator-start {identity}"));
        Ok(())
    }

    /// Whether an operator process runs.
    pub fn operator_running(&self) -> bool {
        !self.seed.operator_pids().is_empty()
    }
}
